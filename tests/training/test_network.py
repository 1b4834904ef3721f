"""The plain network: a training checkpoint, written as Lightning writes it, loads into it without
Lightning, and it predicts what the training module predicts."""

from __future__ import annotations

import pytest
import torch

from common_blocks.errors import PipelineError
from common_blocks.training.checkpoints import load_checkpoint
from common_blocks.training.config import load_config
from common_blocks.training.module import DefectModule
from common_blocks.training.network import DefectNetwork
from tests.repository import DEBUG
from tests.stand_ins import save_untrained

pytestmark = pytest.mark.slow  # builds and runs the debug network

# bce's pos_weight is a buffer of the loss: in the checkpoint, not in the network
OVERRIDES = ["data.scale=0.125", "loss=[{type: bce, args: {pos_weight: [2, 2, 1, 1.5]}}]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[DefectModule, dict]:
    """A training module of the debug config, saved as training saves it; the saved checkpoint."""
    torch.manual_seed(0)
    module = DefectModule(load_config(DEBUG, OVERRIDES).model_dump(mode="json"), 1, pretrained=False).eval()
    path = tmp_path_factory.mktemp("run") / "best.ckpt"
    save_untrained(module, path)
    return module, path


def test_the_checkpoint_holds_the_networks_weights_and_the_losss_buffers(trained):
    """The state dict's layout of every checkpoint so far: ``model.`` keys, then the loss's."""
    module, path = trained
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    network_keys = {f"model.{key}" for key in module.model.state_dict()}
    assert set(saved) == network_keys | {"loss.terms.bce.pos_weight"}


def test_a_training_checkpoint_loads_into_the_plain_network_and_predicts_the_same(trained):
    module, path = trained
    network = load_checkpoint(path)
    assert type(network) is DefectNetwork and not network.training
    assert (network.fold, network.cfg, network.task_mode) == (module.fold, module.cfg, module.task_mode)
    assert set(network.state_dict()) == {key for key in module.state_dict() if key.startswith("model.")}
    images = torch.randn(2, 3, 256, 1600)
    with torch.inference_mode():
        assert torch.equal(network(images), module(images))


def test_the_training_module_loads_the_whole_checkpoint(trained):
    module, path = trained
    loaded = load_checkpoint(path, kind=DefectModule)
    assert type(loaded) is DefectModule
    assert torch.equal(loaded.loss.terms.bce.pos_weight, module.loss.terms.bce.pos_weight)


def test_a_checkpoint_of_another_network_is_one_error_naming_it(trained, tmp_path):
    """The network's keys are checked strictly: a checkpoint whose weights do not fit its config is
    refused, naming the file."""
    _, path = trained
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["state_dict"].pop(next(iter(checkpoint["state_dict"])))
    damaged = tmp_path / "damaged.ckpt"
    torch.save(checkpoint, damaged)
    with pytest.raises(
        PipelineError, match=f"{damaged}: not a readable checkpoint of this pipeline .*Missing key"
    ):
        load_checkpoint(damaged)
