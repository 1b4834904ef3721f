"""Training one fold end to end on tiny synthetic data: outputs, OOF export, NaN, DDP, CLI errors.
Interrupted, killed and resumed runs: tests/cli/test_interrupted_training.py."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from common_blocks.cli import main as cli_main
from common_blocks.errors import ConfigError, PipelineError
from common_blocks.run_folder import RunPaths
from common_blocks.training import precision
from common_blocks.training.checkpoints import load_checkpoint, read_resume_point
from common_blocks.training.config import load_config
from common_blocks.training.losses import WeightedLoss
from common_blocks.training.module import DefectModule, NonFiniteLossError
from common_blocks.training.runner import evaluate_checkpoint, train_fold
from tests.cli_contract import assert_one_error_line, run_in_process
from tests.repository import ROOT

pytestmark = pytest.mark.slow  # every test here trains, loads or runs a model

QUICK = ["trainer.max_epochs=1"]


def _config(path, data_dir, *overrides):
    return load_config(path, [f"data.data_dir={data_dir}", *QUICK, *overrides])


def _fold_images(data_dir, fold):
    folds = pd.read_csv(Path(data_dir) / "folds.csv")
    return set(folds.loc[folds["fold"] == fold, "ImageId"])


@pytest.fixture(scope="module")
def trained_segmenter(synthetic_data, debug_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = _config(debug_config, synthetic_data)
    summary = train_fold(cfg, 1, out)
    return cfg, RunPaths.of(out, cfg.name, 1), summary


def test_fold_outputs(trained_segmenter, synthetic_data):
    cfg, paths, summary = trained_segmenter
    for path in (paths.best, paths.last, paths.config, paths.summary, paths.metrics):
        assert path.is_file(), path
    assert any((paths.logs / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads(paths.summary.read_text())["score"] == summary["score"]
    assert 0.0 <= summary["score"] <= 1.0
    assert yaml.safe_load(paths.config.read_text()) == cfg.model_dump(mode="json")


def test_checkpoint_loads_without_the_yaml(trained_segmenter):
    cfg, paths, _ = trained_segmenter
    module = load_checkpoint(paths.best)
    assert module.cfg == cfg and module.fold == 1 and not module.training
    with torch.inference_mode():
        logits = module(torch.zeros(1, 3, 256, 1600))
    assert logits.shape == (1, 4, 256, 1600)


def test_any_bytes_that_are_no_checkpoint_are_refused_naming_the_file(trained_segmenter, tmp_path):
    """torch's fallback unpickler fails on about one in twenty random files with an IndexError; every
    reader refuses all of them with one PipelineError instead: random bytes, a real checkpoint's zip
    header over random bytes, and a real checkpoint cut at random lengths."""
    _, paths, _ = trained_segmenter
    real = paths.best.read_bytes()
    generator = random.Random(0)
    cases = [generator.randbytes(generator.randrange(1, 8192)) for _ in range(200)]
    cases += [real[:4] + generator.randbytes(generator.randrange(0, 8192)) for _ in range(20)]
    cases += [real[: generator.randrange(4, len(real))] for _ in range(20)]
    path = tmp_path / "damaged.ckpt"
    refusal = f"^{path}: not a readable checkpoint of this pipeline"
    for data in cases:
        path.write_bytes(data)
        with pytest.raises(PipelineError, match=refusal):
            load_checkpoint(path)
        with pytest.raises(PipelineError, match=refusal):
            read_resume_point(path, max_epochs=3)


@pytest.mark.parametrize("source", ["imagenet", "package:no-longer-installed", "/moved/away/weights.pth"])
def test_checkpoints_load_without_their_weights_source(trained_segmenter, tmp_path, offline, capsys, source):
    """A checkpoint whose config names a weights source (the hub, as every GPU config does; a package
    since uninstalled; a file since moved) is read, scored and used without that source: the
    checkpoint holds the trained weights."""
    cfg, paths, summary = trained_segmenter
    checkpoint = torch.load(paths.best, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["model"]["args"]["encoder_weights"] = source
    path = tmp_path / "sourced.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(Exception):  # noqa: B017 - the hub client's error, or the one-line ConfigError
        DefectModule(checkpoint["hyper_parameters"]["config"])  # building it fresh would read the source
    module = load_checkpoint(path)
    assert module.cfg.model.args["encoder_weights"] == source  # the record stays as trained
    assert evaluate_checkpoint(path).score == pytest.approx(summary["score"], abs=1e-12)
    cli_main(["checkpoint", "--checkpoint", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(summary["score"], abs=1e-12)


@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])
def test_training_loss_is_taken_at_the_model_resolution(debug_config, mode):
    """At data.scale 0.25 the network's 64x128 logits meet the mask averaged over 4x4 blocks; a
    block that is 3/4 defect is a soft 0.75 target (multilabel) or the defect class (multiclass)."""
    module = DefectModule(load_config(debug_config, [f"mode={mode}"]).model_dump(mode="json"))
    mask = torch.zeros(1, 4, 256, 512)
    mask[0, 2, :3, :4] = 1  # class 3 on 12 of the 16 pixels of the top-left block
    logits = module.model_logits(torch.zeros(1, 3, 256, 512))
    assert logits.shape[-2:] == (64, 128)
    calls = []
    module.loss.forward = lambda output, target, class_weight=None: (
        calls.append((output, target)) or output.sum()
    )
    module.mask_loss(logits, {"mask": mask})
    output, target = calls[0]
    assert output is logits
    if mode == "multilabel":
        assert target.shape == (1, 4, 64, 128) and target[0, 2, 0, 0] == 0.75 and target.sum() == 0.75
    else:
        assert target.shape == (1, 64, 128) and target[0, 0, 0] == 3 and target.sum() == 3


def test_validation_scores_every_image_of_the_fold_once(trained_segmenter, synthetic_data):
    _, _, summary = trained_segmenter
    assert summary["n_images"] == summary["n_valid_images"] == len(_fold_images(synthetic_data, 1))


def test_single_process_evaluation_matches_the_run(trained_segmenter):
    _, paths, summary = trained_segmenter
    assert evaluate_checkpoint(paths.best).score == pytest.approx(summary["score"], abs=1e-12)


def test_existing_run_is_not_overwritten_silently(trained_segmenter):
    cfg, paths, _ = trained_segmenter
    before = paths.best.stat().st_mtime_ns
    with pytest.raises(Exception, match="already has checkpoints; pass --resume"):
        train_fold(cfg, 1, paths.root.parents[1])
    assert paths.best.stat().st_mtime_ns == before


def test_classifier_gate_trains_and_scores_its_fold(synthetic_data, tmp_path):
    cfg = _config(ROOT / "configs" / "debug_classifier.yaml", synthetic_data)
    summary = train_fold(cfg, 0, tmp_path)
    assert summary["n_images"] == len(_fold_images(synthetic_data, 0))
    module = load_checkpoint(summary["best_checkpoint"])
    assert module.is_classifier and module.fold == 0
    assert evaluate_checkpoint(summary["best_checkpoint"]).score == pytest.approx(summary["score"], abs=1e-12)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    synthetic_data, debug_config, tmp_path, monkeypatch
):
    cfg = _config(debug_config, synthetic_data, "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=1")
    original = WeightedLoss.forward
    training_calls = []

    def poisoned(self, logits, target, class_weight=None):
        loss = original(self, logits, target, class_weight)
        if self.training:
            training_calls.append(1)
            if len(training_calls) > 5:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(WeightedLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="global step 5"):
        train_fold(cfg, 0, tmp_path)
    last = torch.load(RunPaths.of(tmp_path, cfg.name, 0).last, weights_only=False, map_location="cpu")
    assert last["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def _run_train(*args, **kwargs):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fold", "9"], "fold 9 is out of range"),
        (["--fold", "0", "--data-dir", "/nonexistent/data"], "data directory not found"),
        (["--fold", "0", "--set", "trainer.accelerator=gpu"], "no CUDA device is visible"),
        (["--fold", "0", "--set", "trainer.max_epochs=zero"], "trainer.max_epochs"),
    ],
)
def test_cli_errors_are_one_line(synthetic_data, debug_config, tmp_path, args, message):
    """In the process (``train.py`` in a child process: tests/cli/test_interrupted_training.py)."""
    outcome = run_in_process(
        "train", "--config", debug_config, "--data-dir", synthetic_data, "--out-dir", tmp_path / "runs", *args
    )
    assert_one_error_line(outcome, message)
    assert not (tmp_path / "runs").exists()


def test_ddp_two_processes_cover_every_image_once_and_match_single_process(
    synthetic_data, debug_config, tmp_path
):
    result = _run_train(
        "--config",
        debug_config,
        "--fold",
        "3",
        "--data-dir",
        synthetic_data,
        "--out-dir",
        tmp_path,
        "--devices",
        "2",
        *[a for o in QUICK for a in ("--set", o)],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths = RunPaths.of(tmp_path, "debug", 3)
    summary = json.loads(paths.summary.read_text())
    assert summary["n_images"] == len(_fold_images(synthetic_data, 3))  # summed over both ranks
    # Same images and weights; only the batch composition differs, which moves a few logits in the
    # last float bits (CPU convolution kernels depend on batch shape): a pixel may flip, nothing more.
    assert evaluate_checkpoint(paths.best).score == pytest.approx(summary["score"], abs=1e-6)


def test_data_module_gives_each_ddp_rank_a_disjoint_shard(synthetic_data, debug_config, monkeypatch):
    """The data module's own samplers on two ranks: the balanced training epoch is split without
    overlap or loss, and validation covers every image of the fold exactly once, without padding."""
    import common_blocks.training.datamodule as datamodule_module
    from common_blocks.data.samplers import BalancedSampler

    data = datamodule_module.SteelDataModule(_config(debug_config, synthetic_data, "data.num_workers=0"), 0)
    data.prepare_data()
    data.setup("fit")
    shards, validated = [], []
    for rank in (0, 1):
        monkeypatch.setattr(datamodule_module, "_rank_and_world", lambda rank=rank: (rank, 2))
        shards.append(list(data.train_sampler()))
        validated += [image_id for batch in data.val_dataloader() for image_id in batch["image_id"]]
    presence = np.stack([data.train_table[c] != "" for c in ("rle_1", "rle_2", "rle_3", "rle_4")], axis=1)
    epoch = BalancedSampler(presence, len(data.train_table), seed=data.cfg.trainer.seed).epoch_indices()
    assert shards[0] and shards[1]
    assert sorted(shards[0] + shards[1]) == sorted(epoch.tolist())
    assert sorted(validated) == sorted(_fold_images(synthetic_data, 0))


def test_validation_sees_full_unaugmented_images(synthetic_data, debug_config):
    """Validation batches are the images as inference normalises them: full size, never cropped or
    flipped, whatever the training augmentation."""
    from common_blocks.data.datasets import to_tensor
    from common_blocks.data.images import read_image
    from common_blocks.training.datamodule import SteelDataModule

    data = SteelDataModule(_config(debug_config, synthetic_data, "augment.hflip=1.0", "augment.vflip=1.0"), 0)
    data.prepare_data()
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    first = Path(synthetic_data) / "train_images" / batch["image_id"][0]
    assert batch["image"].shape[-2:] == (256, 1600)
    assert torch.equal(batch["image"][0], to_tensor(read_image(first)))


def test_multi_scale_crops_give_each_training_batch_one_of_the_widths(synthetic_data, debug_config):
    from common_blocks.training.datamodule import SteelDataModule

    widths = (128, 256, 512)
    cfg = _config(
        debug_config, synthetic_data, "augment.crop_width=null", f"augment.crop_widths={list(widths)}"
    )
    data = SteelDataModule(cfg, 0)
    data.prepare_data()
    data.setup("fit")
    seen = set()
    for _ in range(4):
        for batch in data.train_dataloader():
            # the masks come at the network's resolution (data.scale 0.25), the loss's targets
            assert batch["image"].shape[-2] == 256 and batch["mask"].shape[-2:] == (
                64,
                batch["image"].shape[-1] // 4,
            )
            seen.add(batch["image"].shape[-1])
    assert seen <= set(widths) and len(seen) > 1
    with pytest.raises(ConfigError, match="does not combine with pseudo-labels"):
        _config(
            debug_config,
            synthetic_data,
            "augment.crop_width=null",
            "augment.crop_widths=[128]",
            "pseudo.labels=x.csv",
        )


@pytest.mark.parametrize("has_bf16, chosen", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_is_decided_once_said_and_recorded(
    synthetic_data, debug_config, tmp_path, monkeypatch, capsys, has_bf16, chosen
):
    """``trainer.precision: auto`` trains in bf16 where the CPU has bf16 instructions and in fp32
    elsewhere; the choice is printed at the start and is what the run's config.yaml and checkpoint say."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    cfg = _config(debug_config, synthetic_data, "trainer.precision=auto", "data.max_images=8")
    train_fold(cfg, 0, tmp_path)
    assert f"trainer.precision auto: {chosen} (the CPU " in capsys.readouterr().err
    paths = RunPaths.of(tmp_path, cfg.name, 0)
    assert yaml.safe_load(paths.config.read_text())["trainer"]["precision"] == chosen
    assert load_checkpoint(paths.best).cfg.trainer.precision == chosen


def test_epoch_counts_beyond_max_epochs_are_warned_about(debug_config):
    from common_blocks.training.runner import epoch_warnings

    assert epoch_warnings(load_config(debug_config)) == []
    warned = epoch_warnings(
        load_config(debug_config, ["optimizer.freeze_encoder_epochs=2", "trainer.average_top_k=5"])
    )
    assert warned == [
        "optimizer.freeze_encoder_epochs 2 >= trainer.max_epochs 2: the encoder stays frozen for the whole run",
        "trainer.average_top_k 5 > trainer.max_epochs 2: averaged.ckpt averages all 2 validations",
    ]


def _trained_weights(synthetic_data, debug_config, out, *overrides):
    cfg = _config(debug_config, synthetic_data, "trainer.limit_train_batches=3", *overrides)
    train_fold(cfg, 0, out)
    return load_checkpoint(RunPaths.of(out, cfg.name, 0).last).state_dict()


def test_training_is_deterministic_and_the_image_cache_changes_no_weight(
    synthetic_data, debug_config, tmp_path
):
    """Two runs of one seed, one reading every image from disk each epoch and one from the image cache,
    end with the same weights: the runs are reproducible (without loader processes too) and the cache
    changes nothing."""
    plain = _trained_weights(synthetic_data, debug_config, tmp_path / "a", "data.cache_images=false")
    cached = _trained_weights(synthetic_data, debug_config, tmp_path / "b", "data.cache_images=true")
    for name, value in plain.items():
        assert torch.equal(value, cached[name]), name


def test_compiled_training_saves_the_plain_networks_checkpoint(
    synthetic_data, debug_config, tmp_path, monkeypatch
):
    """``trainer.compile``: a compiled run trains and validates; its checkpoint has the plain network's
    parameter names and loads (uncompiled) for prediction. Compiled through torch's ``aot_eager``
    backend: the same graph capture and autograd, without inductor's C++ code generation, which took
    2.5 minutes for this tiny network on 2 cores."""
    compiled_with = []
    compile_ = torch.nn.Module.compile

    def aot_eager(network, **kwargs):
        compiled_with.append(network)
        compile_(network, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    compiled = _trained_weights(synthetic_data, debug_config, tmp_path, "trainer.compile=true")
    assert len(compiled_with) == 1
    module = DefectModule(_config(debug_config, synthetic_data).model_dump(mode="json"))
    assert compiled.keys() == module.state_dict().keys()
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert 0 <= summary["score"] <= 1
