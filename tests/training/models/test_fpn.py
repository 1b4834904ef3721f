"""FPN segmentation models (smp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common_blocks.errors import ConfigError

from .base import ModelTestBase


class TestFPN(ModelTestBase):
    model_type = "FPN"

    def test_decoder_attention_is_rejected(self) -> None:
        # smp 0.6's FPN has no scSE option; smp itself would drop the argument silently.
        with pytest.raises(
            ConfigError, match=r"model\.args\.decoder_attention_type: not an argument of smp FPN"
        ):
            self.build(decoder_attention_type="scse")

    def test_pipeline_owned_arguments_are_rejected(self) -> None:
        with pytest.raises(ConfigError, match=r"model\.args\.activation: set by the pipeline"):
            self.build(activation="sigmoid")

    def test_unreadable_weights_file_raises(self, tmp_path: Path) -> None:
        path = tmp_path / "weights.pth"
        path.write_text("not a checkpoint")
        with pytest.raises(ConfigError, match=r"model\.args\.encoder_weights: cannot read"):
            self.build(encoder_weights=str(path))
