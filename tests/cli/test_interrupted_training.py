"""Training keeps the command-line contract when it is refused, fails or is interrupted: one
``error:`` line (exit 2) or one ``interrupted:`` line (exit 130), no traceback, and the run folder
keeps what it had: a refused or failed run changes nothing, a resumed run only extends it.

Driven through ``train.py`` / ``severstal train`` subprocesses (signals, real exits) on the tiny
synthetic data set; one base run is trained once and copied for every case that needs a run folder.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common_blocks.errors import Interrupted
from common_blocks.run_folder import TRAIN_LOSS, VAL_SCORE, RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule
from common_blocks.training.runner import (
    build_trainer,
    lightning_warnings_that_do_not_apply,
    train_fold,
)
from tests.cli_contract import Outcome, as_in_a_terminal, assert_one_error_line, run, run_in_process, snapshot
from tests.repository import ROOT

pytestmark = pytest.mark.slow  # every test here trains, loads or runs a model

FOLD = 0
STEPS_PER_EPOCH = 6  # data.samples_per_epoch=24 at batch size 4


def _sets(*overrides: str) -> list[str]:
    return [argument for override in overrides for argument in ("--set", override)]


def _train_args(debug_config, data_dir, out_dir, *extra) -> list[str]:
    return ["--config", debug_config, "--fold", FOLD, "--data-dir", data_dir, "--out-dir", out_dir, *extra]


def _paths(out_dir: Path) -> RunPaths:
    return RunPaths.of(out_dir, "debug", FOLD)


def _copy_run(source: RunPaths, out_dir: Path) -> RunPaths:
    paths = _paths(out_dir)
    shutil.copytree(source.root, paths.root)
    return paths


def _rows(paths: RunPaths) -> list[dict[str, str]]:
    if not paths.metrics.is_file():
        return []
    with open(paths.metrics, newline="") as file:
        return list(csv.DictReader(file))


def _train_steps(rows: list[dict[str, str]]) -> list[int]:
    steps = []
    for row in rows:
        try:
            if row.get(TRAIN_LOSS):
                steps.append(int(row["step"]))
        except (TypeError, ValueError):  # a line being appended right now
            continue
    return steps


def _interrupted_line(outcome: Outcome) -> str:
    """Exit 130, no traceback, no error line, and the last stderr line says it was interrupted."""
    lines = [line for line in outcome.stderr.strip().splitlines() if line.strip()]
    assert outcome.code == 130, f"exit {outcome.code}, stderr:\n{outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert not [line for line in lines if line.startswith("error: ")], outcome.stderr[-3000:]
    assert lines and lines[-1].startswith("interrupted: "), outcome.stderr[-3000:]
    return lines[-1]


def _start_train(args: list, stderr_path: Path) -> subprocess.Popen:
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # the signal goes to its process group, as Ctrl-C in a terminal
            preexec_fn=as_in_a_terminal,
        )


def _signal_once_logged(process: subprocess.Popen, paths: RunPaths, step: int, signum: int) -> None:
    """Send ``signum`` once the CSV log has the training row of ``step`` (and last.ckpt exists)."""
    deadline = time.time() + 120
    reached = False
    while not reached and time.time() < deadline and process.poll() is None:
        reached = paths.last.is_file() and any(s >= step for s in _train_steps(_rows(paths)))
        time.sleep(0 if reached else 0.1)
    assert process.poll() is None, "the run ended before it could be signalled"
    if not reached:  # what is signalled below would not be what this test is about
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the run logged no step {step} within 120 s (is the machine loaded?)")
    os.killpg(process.pid, signum)
    process.wait(timeout=120)


class _Stop(Exception):
    pass


def _restored_checkpoint_callbacks(paths: RunPaths, data_dir, debug_config, overrides) -> list[tuple]:
    """(monitor, dirpath, best_model_path, best_model_score) of each ModelCheckpoint as a resume of ``paths``
    restores them, in this process; the fit stops before its first step."""
    import lightning as L  # after common_blocks.training, which makes torchvision importable

    cfg = load_config(debug_config, [f"data.data_dir={data_dir}", *overrides[1::2]])
    restored = []

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            restored.extend(
                (c.monitor, c.dirpath, c.best_model_path, c.best_model_score)
                for c in trainer.checkpoint_callbacks
            )
            raise _Stop

    trainer, _ = build_trainer(cfg, paths, "cpu", 1, [Probe()], resume_step=10**9)
    module = DefectModule(cfg.model_dump(mode="json"), FOLD, pretrained=False)
    with pytest.raises(_Stop), lightning_warnings_that_do_not_apply():
        trainer.fit(module, datamodule=SteelDataModule(cfg, FOLD), ckpt_path=paths.last)
    return restored


def _checkpoint_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def base_run(synthetic_data, debug_config, tmp_path_factory) -> RunPaths:
    """A finished one-epoch run of fold 0 (best, last, config, summary, logs); copy it, never change it."""
    out = tmp_path_factory.mktemp("base")
    cfg = load_config(
        debug_config, [f"data.data_dir={synthetic_data}", "trainer.max_epochs=1", "data.samples_per_epoch=8"]
    )
    train_fold(cfg, FOLD, out)
    return _paths(out)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    torch.save({"model": {"weight": torch.zeros(3)}, "epoch": 4}, path)


# case: (damage done to last.ckpt, --set overrides, fragments of the error line besides the file,
# whether through a subprocess or, cheaper where no process boundary matters, in this process)
BAD_RESUMES = {
    "truncated": (_truncate, ["trainer.max_epochs=3"], ["not a readable checkpoint"], run),
    "empty": (
        lambda path: path.write_bytes(b""),
        ["trainer.max_epochs=3"],
        ["not a readable"],
        run_in_process,
    ),
    "garbage": (
        lambda path: path.write_bytes(random.Random(0).randbytes(4096)),
        [],
        ["not a readable"],
        run_in_process,
    ),
    "foreign": (_foreign, [], ["not a training checkpoint of this pipeline"], run_in_process),
    "another model": (
        None,
        ["trainer.max_epochs=3", "model.args.decoder_channels=[32,16,8]"],
        ["weights do not fit the model of this config"],
        run_in_process,
    ),
    "nothing left to train": (
        None,
        ["trainer.max_epochs=1"],
        ["trained 1 epoch(s)", "trainer.max_epochs 1"],
        run,
    ),
}


@pytest.mark.parametrize("case", list(BAD_RESUMES))
def test_a_refused_resume_is_one_line_and_changes_nothing(
    case, base_run, synthetic_data, debug_config, tmp_path
):
    """Nothing in the run folder changes: not config.yaml (``--set`` changes the config), not the CSV
    log, not summary.json; no file appears."""
    damage, overrides, fragments, runner = BAD_RESUMES[case]
    paths = _copy_run(base_run, tmp_path / "runs")
    if damage is not None:
        damage(paths.last)
    before = snapshot(paths.root)
    args = _train_args(debug_config, synthetic_data, tmp_path / "runs", "--resume", *_sets(*overrides))
    outcome = runner("train", *args)
    assert_one_error_line(outcome, str(paths.last), *fragments)
    assert snapshot(paths.root) == before


def test_resume_finishes_a_run_stopped_after_its_fit_before_its_summary(
    base_run, synthetic_data, debug_config, tmp_path
):
    """Ctrl-C in the final validation leaves every checkpoint and no summary.json: --resume trains
    nothing more, validates the best checkpoint and writes the summary the run would have written."""
    paths = _copy_run(base_run, tmp_path / "runs")
    expected = json.loads(paths.summary.read_text())
    paths.summary.unlink()
    checkpoints = snapshot(paths.best, paths.last)
    args = _train_args(debug_config, synthetic_data, tmp_path / "runs", "--resume")
    outcome = run_in_process("train", *args, *_sets("trainer.max_epochs=1", "data.samples_per_epoch=8"))
    assert outcome.code == 0, outcome.stderr[-2000:]
    summary = json.loads(paths.summary.read_text())
    assert summary["score"] == expected["score"] and summary["epochs"] == expected["epochs"] == 1
    assert snapshot(paths.best, paths.last) == checkpoints


@pytest.mark.subprocess
def test_devices_zero_is_one_line_and_makes_no_run_folder(synthetic_data, debug_config, tmp_path):
    outcome = run(
        "train", *_train_args(debug_config, synthetic_data, tmp_path / "runs", "--devices", "0"), cwd=ROOT
    )
    assert_one_error_line(outcome, "--devices")
    assert not (tmp_path / "runs").exists()


@pytest.mark.subprocess
def test_overwrite_that_fails_on_a_corrupt_image_in_a_worker_keeps_the_earlier_run(
    base_run, synthetic_data, debug_config, tmp_path
):
    """A corrupt training image read in a DataLoader worker is one line naming it, and the
    ``--overwrite`` that failed before its first checkpoint leaves the earlier run as it was."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    images = sorted((data / "train_images").iterdir())
    for image in images:
        image.write_bytes(b"not a JPEG")
    paths = _copy_run(base_run, tmp_path / "runs")
    before = snapshot(paths.root)
    args = _train_args(debug_config, data, tmp_path / "runs", "--overwrite", *_sets("data.num_workers=1"))
    outcome = run("train", *args, cwd=ROOT)
    line = assert_one_error_line(outcome, "not a readable image file")
    assert any(str(image) in line for image in images), line
    assert "DataLoader worker" not in outcome.stderr
    assert snapshot(paths.root) == before
    assert not paths.previous_run.exists()


def test_ctrl_c_before_the_first_checkpoint_leaves_the_folder_as_it_was(
    base_run, synthetic_data, debug_config, tmp_path, monkeypatch
):
    paths = _copy_run(base_run, tmp_path / "runs")
    before = snapshot(paths.root)

    def ctrl_c(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(DefectModule, "training_step", ctrl_c)
    cfg = load_config(debug_config, [f"data.data_dir={synthetic_data}", "trainer.max_epochs=1"])
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="before its first checkpoint; the earlier run"):
        train_fold(cfg, FOLD, tmp_path / "runs", overwrite=True)
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN does not outlive the run
    assert snapshot(paths.root) == before
    assert not paths.previous_run.exists()
    # A fresh run into a new folder, stopped before its first checkpoint, leaves no folder behind.
    with pytest.raises(Interrupted, match="before its first checkpoint; nothing to resume"):
        train_fold(cfg, FOLD, tmp_path / "new" / "runs")
    assert not (tmp_path / "new").exists()


def test_an_overwrite_killed_before_its_first_checkpoint_is_put_back(
    base_run, synthetic_data, debug_config, tmp_path
):
    """What SIGKILL leaves between setting the earlier run aside and the first new checkpoint: the
    next run of the folder puts the earlier run back (here it then refuses to reuse it silently)."""
    paths = _copy_run(base_run, tmp_path / "runs")
    before = snapshot(paths.root)
    aside = paths.previous_run
    aside.mkdir()
    for path in (paths.last, paths.best, paths.summary, paths.config, paths.logs):
        os.replace(path, aside / path.name)
    (aside / ".complete").touch()
    paths.config.write_text("the killed run's config\n")
    paths.metrics.parent.mkdir(parents=True)
    paths.metrics.write_text("epoch,step\n")
    outcome = run_in_process("train", *_train_args(debug_config, synthetic_data, tmp_path / "runs"))
    assert_one_error_line(outcome, "already has checkpoints")
    assert snapshot(paths.root) == before
    assert not aside.exists()


@pytest.mark.subprocess
def test_interrupt_resume_kill_move_resume_keeps_one_whole_self_contained_run(
    base_run, synthetic_data, debug_config, tmp_path
):
    """``--overwrite`` interrupted by Ctrl-C mid-epoch, ``--resume`` killed (SIGKILL) mid-epoch with a
    checkpoint temporary left behind, the folder moved, ``--resume`` there: one run whose CSV log has
    every step once, which refers only to its own files, with the stale temporary gone."""
    first = tmp_path / "first"
    paths = _copy_run(base_run, first)
    overrides = _sets(
        "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=1", "data.samples_per_epoch=24"
    )
    args = _train_args(debug_config, synthetic_data, first, *overrides)

    # 1. Ctrl-C mid-epoch 0 of an --overwrite: exit 130, one line naming last.ckpt and --resume.
    process = _start_train([*args, "--overwrite"], tmp_path / "stderr1")
    _signal_once_logged(process, paths, 2, signal.SIGINT)
    line = _interrupted_line(Outcome(process.returncode, "", (tmp_path / "stderr1").read_text()))
    assert str(paths.last) in line and "--resume" in line, line
    interrupted_at = _checkpoint_state(paths.last)["global_step"]
    assert 2 <= interrupted_at < STEPS_PER_EPOCH
    # The new run has its checkpoint: the earlier run (best.ckpt, summary.json) is gone with its set-aside.
    assert not paths.best.exists() and not paths.summary.exists() and not paths.previous_run.exists()

    # 2. --resume, killed mid-epoch 1 (after epoch 0's validation wrote best.ckpt).
    process = _start_train([*args, "--resume"], tmp_path / "stderr2")
    _signal_once_logged(process, paths, STEPS_PER_EPOCH + 2, signal.SIGKILL)
    assert paths.best.is_file()
    killed_at = _checkpoint_state(paths.last)["global_step"]
    assert STEPS_PER_EPOCH < killed_at < 2 * STEPS_PER_EPOCH
    stale = [paths.root / ".last.ckpt.k1ll3d00.tmp", paths.root / ".best.ckpt.k1ll3d01.tmp"]
    for temporary in stale:  # what SIGKILL during a checkpoint write leaves
        temporary.write_bytes(os.urandom(1 << 20))
    log_before = paths.metrics.read_text().splitlines()
    step_column = log_before[0].split(",").index("step")
    kept_before = [line for line in log_before[1:] if int(line.split(",")[step_column]) < killed_at]
    # Lightning logs a batch's row just after the checkpoint of that batch: a kill between the two
    # loses that one row (the resumed run starts after the batch); it is not in the log to keep.
    lost = {killed_at - 1} - set(_train_steps(_rows(paths)))

    # 3. The folder moves; --resume there.
    moved = tmp_path / "moved"
    (moved / "debug").mkdir(parents=True)
    shutil.move(paths.root, moved / "debug" / paths.root.name)
    paths = _paths(moved)
    restored = _restored_checkpoint_callbacks(paths, synthetic_data, debug_config, overrides)
    for monitor, dirpath, best_path, score in restored:
        assert dirpath == os.path.realpath(paths.root) and Path(best_path).parent == Path(dirpath), restored
        if monitor == VAL_SCORE:
            # best.ckpt's score came along: a worse epoch will not replace best.ckpt
            assert score is not None, restored
    outcome = run(
        "train", *_train_args(debug_config, synthetic_data, moved, *overrides, "--resume"), cwd=ROOT
    )
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert "dirpath has changed" not in outcome.stderr  # Lightning's sign that it kept the old folder's paths
    assert not [temporary for temporary in stale if temporary.name in os.listdir(paths.root)]
    summary = json.loads(paths.summary.read_text())
    assert Path(summary["best_checkpoint"]) == paths.best.absolute()
    assert (
        json.loads(outcome.stdout.strip().splitlines()[-1])["best_checkpoint"] == summary["best_checkpoint"]
    )
    assert summary["epochs"] == 2
    for state in _checkpoint_state(paths.last)["callbacks"].values():
        assert state["dirpath"] == os.path.realpath(paths.root)
        assert all(
            os.path.dirname(p) == state["dirpath"]
            for p in (state["best_model_path"], *state["best_k_models"])
        )

    # The CSV log holds the whole history, each step once; the rows before the kill are kept as they were.
    rows = _rows(paths)
    assert _train_steps(rows) == [step for step in range(2 * STEPS_PER_EPOCH) if step not in lost]
    validated = [int(row["epoch"]) for row in rows if row.get(VAL_SCORE)]
    assert validated == [0, 1, 2]  # each epoch's validation, then the best checkpoint's after the fit
    log_after = paths.metrics.read_text().splitlines()
    assert log_after[0] == log_before[0] and log_after[1 : 1 + len(kept_before)] == kept_before

    # 4. A resume with trainer.max_epochs below the epochs trained is refused and changes nothing.
    before = snapshot(paths.root)
    args = _train_args(debug_config, synthetic_data, moved, "--resume", *_sets("trainer.max_epochs=1"))
    outcome = run_in_process("train", *args)
    assert_one_error_line(outcome, str(paths.last), "trained 2 epoch(s)", "trainer.max_epochs 1")
    assert snapshot(paths.root) == before
