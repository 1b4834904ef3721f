"""The top-solution techniques' mechanics: checkpoint weight averaging, the tuned validation score and
its monitor, staged training, the segmenter's class head (the soft gate, blackout and BCE positive
weights are tested beside post-processing, transforms and losses)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from common_blocks.cli import main as cli_main
from common_blocks.errors import ConfigError
from common_blocks.inference.ensemble_config import load_ensemble_config
from common_blocks.inference.predictor import build_predictor
from common_blocks.run_folder import VAL_SCORE, VAL_TUNED_SCORE, RunPaths
from common_blocks.training.averaging import average_state_dicts, reestimate_batch_norm
from common_blocks.training.callbacks import frozen_encoder_parameters
from common_blocks.training.checkpoints import load_checkpoint
from common_blocks.training.config import load_config
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule
from common_blocks.training.runner import train_fold
from tests.cli_contract import assert_one_error_line, run_in_process

pytestmark = pytest.mark.slow  # every test here trains, loads or runs a model

TOP_K = 2


def _epoch_metrics(paths: RunPaths, epochs: int = 4) -> pd.DataFrame:
    """The validation rows of the fit's epochs (the later rows are the validations of best.ckpt and
    averaged.ckpt after the fit, logged at epoch ``epochs``)."""
    metrics = pd.read_csv(paths.metrics).dropna(subset=[VAL_SCORE])
    return metrics[metrics["epoch"] < epochs].set_index("epoch")


@pytest.fixture(scope="module")
def averaged_run(synthetic_data, debug_config, tmp_path_factory):
    """4 epochs of the debug model, best.ckpt and the averaged weights picked by the tuned score."""
    out = tmp_path_factory.mktemp("runs")
    overrides = [
        f"data.data_dir={synthetic_data}",
        "trainer.max_epochs=4",
        f"trainer.average_top_k={TOP_K}",
        "trainer.monitor=tuned_score",
    ]
    cfg = load_config(debug_config, overrides)
    summary = train_fold(cfg, 0, out)
    return cfg, RunPaths.of(out, cfg.name, 0), summary


def test_averaged_weights_are_the_mean_of_the_k_best_validations(averaged_run):
    _, paths, summary = averaged_run
    tuned = _epoch_metrics(paths)[VAL_TUNED_SCORE]
    kept = sorted(paths.top_k.glob("epoch*.pt"))
    expected_epochs = sorted(tuned.sort_values(ascending=False, kind="stable").index[:TOP_K])
    assert [int(path.stem.removeprefix("epoch")) for path in kept] == expected_epochs
    states = [torch.load(path, weights_only=True)["state_dict"] for path in kept]
    averaged = torch.load(paths.averaged, weights_only=True)
    assert sorted(averaged["averaged_epochs"]) == expected_epochs
    for name, tensor in averaged["state_dict"].items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (states[0][name] + states[1][name]) / 2, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(tensor, states[0][name]) or torch.equal(tensor, states[1][name])
    assert "optimizer_states" not in averaged
    assert load_checkpoint(paths.averaged).cfg.name == "debug"
    assert summary["averaged"]["checkpoint"] == str(paths.averaged.absolute())
    assert 0.0 <= summary["averaged"]["score"] <= 1.0


def test_best_checkpoint_is_the_epoch_of_the_best_tuned_score(averaged_run):
    _, paths, summary = averaged_run
    tuned = _epoch_metrics(paths)[VAL_TUNED_SCORE]
    best_epoch = int(tuned.idxmax())  # the first of ties, as ModelCheckpoint keeps the first
    assert torch.load(paths.best, weights_only=True)["epoch"] == best_epoch
    assert summary["tuned_score"] == pytest.approx(tuned.max(), abs=1e-6)


def _one_member_ensemble(averaged_run, data_dir, out, checkpoint: str):
    """An ensemble config of the run's ``checkpoint`` alone, without TTA, averaging probabilities."""
    cfg, paths, _ = averaged_run
    ensemble = out / f"{checkpoint}.yaml"
    ensemble.write_text(
        json.dumps(
            {
                "runs_dir": str(paths.root.parent.parent),
                "data_dir": str(data_dir),
                "members": [{"config": cfg.name, "folds": [0], "checkpoint": checkpoint}],
                "tta": ["none"],
                "leaderboard": str(out / "leaderboard.csv"),
            }
        )
    )
    return ensemble


def _local_cv_of_the_run(averaged_run, data_dir, out, capsys, checkpoint: str) -> float:
    """``severstal oof``'s local CV for an ensemble of the run's ``checkpoint`` alone."""
    ensemble = _one_member_ensemble(averaged_run, data_dir, out, checkpoint)
    cli_main(["oof", "--config", str(ensemble), "--json"])
    return json.loads(capsys.readouterr().out)["score"]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("checkpoint", ["best", "averaged"])
def test_validation_probabilities_are_the_predictors_bit_for_bit(
    averaged_run, synthetic_data, tmp_path, checkpoint
):
    """What makes the tuned score exact: validation activates at the network's resolution and resizes
    the probabilities, as the predictor does (``average: probabilities``). Resizing logits first gives
    other floats, and a pixel within rounding of a threshold then flips."""
    cfg, paths, _ = averaged_run
    ensemble = load_ensemble_config(_one_member_ensemble(averaged_run, synthetic_data, tmp_path, checkpoint))
    predictor = build_predictor(ensemble, folds=[0], device="cpu")
    module = load_checkpoint(paths.checkpoint(checkpoint), kind=DefectModule)
    datamodule = SteelDataModule(module.cfg, 0)
    datamodule.setup("validate")
    for batch_index, batch in enumerate(datamodule.val_dataloader()):
        with torch.inference_mode():
            validated = module.validation_step(batch, batch_index)["probs"]
        assert torch.equal(validated, predictor.probabilities(batch["image"]))


def test_tuned_score_is_the_local_cv_of_the_run_alone(averaged_run, synthetic_data, tmp_path, capsys):
    """The logged tuned score is what ``severstal oof`` finds for an ensemble of this one checkpoint
    without TTA: the same statistics grid and the same search."""
    local_cv = _local_cv_of_the_run(averaged_run, synthetic_data, tmp_path, capsys, "best")
    assert local_cv == pytest.approx(averaged_run[2]["tuned_score"], abs=1e-9)


def test_an_ensemble_member_can_use_the_averaged_checkpoint(averaged_run, synthetic_data, tmp_path, capsys):
    local_cv = _local_cv_of_the_run(averaged_run, synthetic_data, tmp_path, capsys, "averaged")
    assert local_cv == pytest.approx(averaged_run[2]["averaged"]["tuned_score"], abs=1e-9)


def test_average_of_state_dicts_is_elementwise_and_keeps_counters():
    generator = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(3, 4, generator=generator), "n": torch.tensor(step)} for step in (5, 7, 9)]
    averaged = average_state_dicts(states)
    torch.testing.assert_close(averaged["w"], sum(s["w"] for s in states) / 3)
    assert averaged["n"].item() == 5 and averaged["n"].dtype == torch.int64
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([states[0], {"w": states[1]["w"]}])


def test_batch_norm_reestimation_gives_the_statistics_of_the_batches():
    layer = torch.nn.BatchNorm2d(2, momentum=0.1)
    layer.running_mean.fill_(5.0)
    model = torch.nn.Sequential(layer).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 2, 3, 3, generator=generator) * 2 + 1 for _ in range(3)]
    reestimate_batch_norm(model, batches)
    pixels = torch.cat(batches).transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(layer.running_mean, pixels.mean(dim=1))
    assert layer.momentum == 0.1 and not model.training


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _stage_two(averaged_run, out, *overrides):
    """A later stage over the debug run: a new name, its weights taken from the run's best.ckpt."""
    _, paths, _ = averaged_run
    cfg = load_config(
        paths.config,
        ["name=debug_stage2", f"init_from={paths.best}", "trainer.average_top_k=null", *overrides],
    )
    train_fold(cfg, 0, out)
    return RunPaths.of(out, cfg.name, 0)


def test_frozen_encoder_weights_stay_while_the_decoder_and_batch_norm_learn(averaged_run, tmp_path):
    """Started from the earlier stage's weights: after one frozen epoch the encoder's weights are
    exactly that stage's, batch norm and decoder moved; one epoch later the encoder moved too."""
    _, paths, _ = averaged_run
    parent = _weights(paths.best)
    module = load_checkpoint(paths.best)
    frozen = {
        name
        for name, p in module.named_parameters()
        if any(p is q for q in frozen_encoder_parameters(module.model))
    }
    norms = {
        f"{name}.weight" for name, layer in module.named_modules() if isinstance(layer, torch.nn.BatchNorm2d)
    }
    encoder_norms = {name for name in norms if name.startswith("model.encoder.")}
    decoder = {name for name, _ in module.named_parameters() if not name.startswith("model.encoder.")}
    assert frozen and encoder_norms and decoder and not frozen & encoder_norms
    one = _weights(
        _stage_two(
            averaged_run, tmp_path / "one", "trainer.max_epochs=1", "optimizer.freeze_encoder_epochs=1"
        ).last
    )
    for name in frozen:
        assert torch.equal(one[name], parent[name]), name
    assert not all(torch.equal(one[name], parent[name]) for name in encoder_norms)
    assert not all(torch.equal(one[name], parent[name]) for name in decoder)
    two = _weights(
        _stage_two(
            averaged_run, tmp_path / "two", "trainer.max_epochs=2", "optimizer.freeze_encoder_epochs=1"
        ).last
    )
    assert not all(torch.equal(two[name], parent[name]) for name in frozen)


def test_a_stage_named_by_config_starts_from_that_runs_best_checkpoint_of_the_fold(averaged_run, tmp_path):
    cfg, paths, _ = averaged_run
    out = paths.root.parent.parent
    stage = load_config(paths.config, ["name=debug_stage_by_config", f"init_from={paths.config}"])
    assert stage.parent_stage == paths.config
    assert stage.init_checkpoint(out, 0) == paths.best
    assert stage.init_checkpoint(out, 3) == RunPaths.of(out, cfg.name, 3).best
    with pytest.raises(ConfigError, match="trains this run itself"):
        load_config(paths.config, [f"init_from={paths.config}"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(paths.config, ["name=x", f"init_from={tmp_path / 'missing.yaml'}"])
    with pytest.raises(ConfigError, match="expected a .ckpt file or configs/NAME.yaml"):
        load_config(paths.config, ["name=x", "init_from=debug"])


def test_init_from_another_architecture_is_one_error_line_and_writes_nothing(
    averaged_run, synthetic_data, tmp_path
):
    _, paths, _ = averaged_run
    outcome = run_in_process(
        "train",
        "--config",
        paths.config,
        "--fold",
        0,
        "--out-dir",
        tmp_path / "runs",
        "--data-dir",
        synthetic_data,
        "--set",
        "name=other",
        "--set",
        "model.args.decoder_channels=[32,16,8]",
        "--init-from",
        paths.best,
    )
    assert_one_error_line(
        outcome,
        f"init_from: {paths.best}: its weights do not fit the model of this config, cannot start from it",
    )
    assert not (tmp_path / "runs").exists()
    missing = run_in_process(
        "train",
        "--config",
        paths.config,
        "--fold",
        0,
        "--out-dir",
        tmp_path / "runs",
        "--init-from",
        tmp_path / "none.ckpt",
    )
    assert_one_error_line(missing, f"--init-from {tmp_path / 'none.ckpt'}: expected an existing .ckpt file")


def _module_with_class_head(debug_config, loss_weight: float) -> DefectModule:
    """The debug segmenter with a class head, seeded, in eval mode (no dropout: exact losses)."""
    cfg = load_config(debug_config, [f"class_head={{loss_weight: {loss_weight}}}", "data.scale=0.125"])
    torch.manual_seed(0)
    return DefectModule(cfg.model_dump(mode="json"), 0, pretrained=False).eval()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_the_class_head_learns_which_classes_the_mask_holds_at_its_loss_weight(debug_config):
    """The training loss adds ``loss_weight`` times the head's BCE against the classes present in the
    mask; the head's gradient scales with the weight, and the decoder's does not see the head at all."""
    torch.manual_seed(1)
    mask = torch.zeros(2, 4, 256, 1600, dtype=torch.uint8)
    mask[0, 1, 10:20, 30:40] = 1
    mask[1, 3, 255, 1599] = 1  # one pixel is enough
    batch = {"image": torch.randn(2, 3, 256, 1600), "mask": mask}
    present = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    losses, gradients = {}, {}
    for weight in (0.25, 0.5):
        module = _module_with_class_head(debug_config, weight)
        losses[weight] = module.training_step(batch, 0)
        losses[weight].backward()
        gradients[weight] = {
            name: p.grad for name, p in module.model.named_parameters() if p.grad is not None
        }
    with torch.no_grad():
        class_logits = module.model_outputs(batch["image"])[1]
    head_loss = torch.nn.functional.binary_cross_entropy_with_logits(class_logits, present)
    torch.testing.assert_close(losses[0.5] - losses[0.25], 0.25 * head_loss)
    head = [name for name in gradients[0.5] if name.startswith("classification_head.")]
    decoder = [name for name in gradients[0.5] if name.startswith("decoder.")]
    assert head and decoder
    for name in head:
        torch.testing.assert_close(gradients[0.5][name], 2 * gradients[0.25][name])
    for name in decoder:
        torch.testing.assert_close(gradients[0.5][name], gradients[0.25][name], rtol=0, atol=0)


def test_the_gate_pass_of_a_class_head_is_the_encoder_and_head_of_the_full_pass(debug_config):
    module = _module_with_class_head(debug_config, 0.2)
    images = torch.randn(3, 3, 256, 1600)
    with torch.inference_mode():
        assert torch.equal(module.class_logits(images), module.model_outputs(images)[1])


def test_a_run_with_a_class_head_logs_its_loss(synthetic_data, debug_config, tmp_path):
    cfg = load_config(
        debug_config, [f"data.data_dir={synthetic_data}", "trainer.max_epochs=1", "class_head={}"]
    )
    train_fold(cfg, 0, tmp_path)
    metrics = pd.read_csv(RunPaths.of(tmp_path, cfg.name, 0).metrics)
    for column in ("train/loss_class", "val/loss_class"):
        values = metrics[column].dropna()
        assert len(values) and (values > 0).all()
    assert load_checkpoint(RunPaths.of(tmp_path, cfg.name, 0).best).has_class_head
