"""Unet segmentation models (smp), with scSE decoder attention as the real configs use it."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import HEIGHT, WIDTH, ModelTestBase


class TestUnet(ModelTestBase):
    model_type = "Unet"
    args = {"encoder_name": "resnet18", "decoder_attention_type": "scse"}
    # smp builds an attention before the last decoder block's skip connection, which that block lacks.
    unused_parameters = ("decoder.blocks.4.attention1.",)

    def test_timm_universal_encoder_loads_local_weights(self, tmp_path: Path) -> None:
        """``tu-`` encoders wrap a timm features-only model; their weights load the same way."""
        saved = self.build(encoder_name="tu-resnet18").encoder.state_dict()
        path = self.save_weights(saved, tmp_path / "tu-resnet18.pth")
        model = self.build(encoder_name="tu-resnet18", encoder_weights=str(path)).eval()
        torch.testing.assert_close(
            model.encoder.state_dict()["model.conv1.weight"], saved["model.conv1.weight"]
        )
        with torch.no_grad():
            assert model(torch.randn(1, 3, HEIGHT, WIDTH)).shape == self.expected_shape(1)
