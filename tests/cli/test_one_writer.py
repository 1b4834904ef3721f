"""One writer at a time: a run folder (``train``), an ensemble's tuned thresholds (``oof``) and the runs of
an ensemble (``sweep``) are each written by one process; a second gets one line naming the output and
the holder's pid, before it touches anything. A lock left by a killed process never blocks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common_blocks.one_writer import Busy, lock_file, one_writer
from common_blocks.run_folder import RUN_FOLDER_BUSY, RunPaths
from tests.cli_contract import assert_one_error_line, assert_unchanged, run_in_process, snapshot
from tests.debug_runs import debug_ensemble_file
from tests.repository import DEBUG, ROOT

# A process that takes the lock of argv[1], says so, and waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from common_blocks.one_writer import one_writer
with one_writer(Path(sys.argv[1]), "held by the test's child"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_is_refused_and_the_lock_goes_with_the_first(tmp_path):
    target = tmp_path / "new" / "deeper" / "fold0"
    with one_writer(target, "this run folder is being trained"):
        assert lock_file(target).read_text() == f"{os.getpid()}\n"
        with pytest.raises(Busy) as busy, one_writer(target, "this run folder is being trained"):
            pass
        assert str(busy.value) == (
            f"{target}: this run folder is being trained by another process (pid {os.getpid()}); "
            "wait for it to end or stop it"
        )
    assert not (tmp_path / "new").exists()  # the lock file and the folders made for it are gone
    with one_writer(target, "again"):  # and the next writer takes it
        pass


@pytest.mark.subprocess
def test_a_lock_held_by_another_process_names_it_and_one_left_by_a_killed_process_does_not_block(tmp_path):
    target = tmp_path / "runs" / "debug" / "fold0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    try:
        assert holder.stdout.readline() == "held\n"
        refused = rf"^{re.escape(str(target))}: .* by another process \(pid {holder.pid}\)"
        with pytest.raises(Busy, match=refused), one_writer(target, "this run folder is being trained"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_file(target).read_text() == f"{holder.pid}\n"  # left behind, with the dead pid
    with one_writer(target, "this run folder is being trained"):
        assert lock_file(target).read_text() == f"{os.getpid()}\n"
    assert not lock_file(target).exists()


def test_train_into_a_run_folder_being_trained_is_one_line_and_changes_nothing(tmp_path):
    """Two trainings of one folder once crashed on each other's ``.previous-run`` and TensorBoard file."""
    runs = tmp_path / "runs"
    paths = RunPaths.of(runs, "debug", 0)
    paths.root.mkdir(parents=True)
    paths.last.write_bytes(b"the other run's checkpoint")
    before = snapshot(tmp_path)
    argv = ["train", "--config", DEBUG, "--fold", 0, "--out-dir", runs, "--overwrite"]
    with one_writer(paths.root, RUN_FOLDER_BUSY):
        outcome = run_in_process(*argv, "--set", f"data.data_dir={tmp_path / 'data'}")
    assert_one_error_line(
        outcome, f"{paths.root}: this run folder is being trained by another process (pid {os.getpid()})"
    )
    assert_unchanged(before, tmp_path)
    assert sorted(p.name for p in paths.root.iterdir()) == ["last.ckpt"]


def test_sweep_of_an_ensemble_being_swept_is_one_line(tmp_path):
    ensemble = debug_ensemble_file(tmp_path / "ensemble", tmp_path / "runs", tmp_path / "data")
    target = tmp_path / "runs" / ensemble.stem
    with one_writer(target, f"the ensemble {ensemble.stem} is being swept"):
        outcome = run_in_process("sweep", "--config", ensemble, "--executor", "local", "--train-only")
    assert_one_error_line(
        outcome,
        f"{target}: the ensemble {ensemble.stem} is being swept by another process (pid {os.getpid()})",
    )
    assert not (tmp_path / "runs").exists()


def test_oof_of_thresholds_being_searched_is_one_line(tmp_path, runs: Path, data: Path):
    ensemble = debug_ensemble_file(tmp_path / "ensemble", runs, data)
    thresholds = tmp_path / "ensemble" / "thresholds.json"
    before = snapshot(tmp_path, runs)
    with one_writer(thresholds, "these tuned thresholds are being searched"):
        outcome = run_in_process("oof", "--config", ensemble, "--workers", 0)
    assert_one_error_line(
        outcome,
        f"{thresholds}: these tuned thresholds are being searched by another process (pid {os.getpid()})",
    )
    assert_unchanged(before, tmp_path, runs)
