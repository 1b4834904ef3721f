"""Checks every model family passes; ``test_<family>.py`` subclasses set the family's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import ModelConfig
from common_blocks.training.models import build_model
from common_blocks.training.optim import split_parameters

HEIGHT, WIDTH = 64, 128


class ModelTestBase:
    model_type: ClassVar[str]
    args: ClassVar[dict[str, Any]] = {"encoder_name": "resnet18"}
    # An encoder the real configs use, built once per family to check its name resolves (~0.3 s).
    heavy_encoder: ClassVar[str] = "se_resnext50_32x4d"
    num_outputs: ClassVar[int] = 4
    segmentation: ClassVar[bool] = True
    # Parameters the family's forward never uses (name prefixes), e.g. smp leftovers.
    unused_parameters: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture(autouse=True)
    def _seed(self) -> None:
        torch.manual_seed(0)

    def build(self, **overrides: Any) -> nn.Module:
        args = {**self.args, "encoder_weights": None, **overrides}
        return build_model(ModelConfig(type=self.model_type, args=args), self.num_outputs)

    def expected_shape(self, batch: int) -> tuple[int, ...]:
        spatial = (HEIGHT, WIDTH) if self.segmentation else ()
        return (batch, self.num_outputs, *spatial)

    def weights_owner(self, model: nn.Module) -> nn.Module:
        """The module a local ``encoder_weights`` file is loaded into."""
        return model.encoder if self.segmentation else model

    def save_weights(self, state: dict[str, torch.Tensor], path: Path) -> Path:
        if path.suffix == ".safetensors":
            save_file({name: tensor.contiguous() for name, tensor in state.items()}, path)
        else:
            torch.save(state, path)
        return path

    @pytest.mark.parametrize("in_channels", [3, 1])
    def test_forward_shape(self, in_channels: int) -> None:
        model = self.build(in_channels=in_channels).eval()
        with torch.no_grad():
            output = model(torch.randn(1, in_channels, HEIGHT, WIDTH))
        assert output.shape == self.expected_shape(1)

    def test_backward_reaches_every_used_parameter(self) -> None:
        model = self.build()
        model(torch.randn(2, 3, HEIGHT, WIDTH)).square().mean().backward()
        without_grad = {name for name, parameter in model.named_parameters() if parameter.grad is None}
        assert without_grad == {name for name in without_grad if name.startswith(self.unused_parameters)}

    def test_parameter_groups_cover_every_parameter_once(self) -> None:
        model = self.build()
        encoder, decoder = split_parameters(model)
        assert encoder and decoder
        grouped = [id(parameter) for parameter in encoder + decoder]
        assert sorted(grouped) == sorted(id(parameter) for parameter in model.parameters())

    def test_channels_last_matches_contiguous(self) -> None:
        model = self.build().eval()
        images = torch.randn(2, 3, HEIGHT, WIDTH)
        with torch.no_grad():
            expected = model(images)
            model = model.to(memory_format=torch.channels_last)
            actual = model(images.to(memory_format=torch.channels_last))
        # Other kernels sum in another order: differences of ~1e-4 on logits of magnitude ~10.
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3)

    @pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
    def test_local_weights_file_loads(self, tmp_path: Path, suffix: str) -> None:
        saved = self.weights_owner(self.build()).state_dict()
        path = self.save_weights(saved, tmp_path / f"weights{suffix}")
        loaded = self.weights_owner(self.build(encoder_weights=str(path))).state_dict()
        assert loaded.keys() == saved.keys()
        for name, tensor in saved.items():
            torch.testing.assert_close(loaded[name], tensor)

    def test_rgb_weights_adapt_to_grey_input(self, tmp_path: Path) -> None:
        saved = self.weights_owner(self.build()).state_dict()
        path = self.save_weights(saved, tmp_path / "weights.pth")
        loaded = self.weights_owner(self.build(in_channels=1, encoder_weights=str(path))).state_dict()
        adapted = [name for name in saved if saved[name].shape != loaded[name].shape]
        assert len(adapted) == 1
        torch.testing.assert_close(loaded[adapted[0]], saved[adapted[0]].sum(dim=1, keepdim=True))

    def test_mismatching_weights_file_raises(self, tmp_path: Path) -> None:
        state = self.weights_owner(self.build()).state_dict()
        dropped = next(iter(state))
        del state[dropped]
        state["not_a_layer.weight"] = torch.zeros(1)
        path = self.save_weights(state, tmp_path / "weights.pth")
        with pytest.raises(ConfigError, match=rf"model\.args\.encoder_weights: .*{dropped}.*not_a_layer"):
            self.build(encoder_weights=str(path))

    def test_weights_of_another_shape_raise(self, tmp_path: Path) -> None:
        grey = self.weights_owner(self.build(in_channels=1)).state_dict()
        path = self.save_weights(grey, tmp_path / "grey.pth")
        with pytest.raises(ConfigError, match=r"model\.args\.encoder_weights: .*tensor shapes differ"):
            self.build(encoder_weights=str(path))

    def test_missing_weights_file_raises(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"model\.args\.encoder_weights"):
            self.build(encoder_weights=str(tmp_path / "absent.pth"))

    def test_unknown_encoder_raises(self) -> None:
        with pytest.raises(ConfigError, match=r"model\.args\.encoder_name: unknown .*'no_such_net'"):
            self.build(encoder_name="no_such_net")

    def test_heavy_encoder_builds(self) -> None:
        model = self.build(encoder_name=self.heavy_encoder)
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 3, HEIGHT, WIDTH)).shape == self.expected_shape(1)
