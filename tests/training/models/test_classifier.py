"""The image-level classifier gate (timm)."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import ModelTestBase


class TestClassifier(ModelTestBase):
    model_type = "Classifier"
    args = {"encoder_name": "resnet18", "dropout": 0.2}
    heavy_encoder = "resnet34"
    segmentation = False

    def test_weights_with_another_head_keep_the_backbone(self, tmp_path: Path) -> None:
        saved = self.build().state_dict()
        saved["fc.weight"], saved["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
        path = self.save_weights(saved, tmp_path / "imagenet.pth")
        loaded = self.build(encoder_weights=str(path)).state_dict()
        torch.testing.assert_close(loaded["conv1.weight"], saved["conv1.weight"])
        assert loaded["fc.weight"].shape == (self.num_outputs, 512)
