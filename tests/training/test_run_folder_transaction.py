"""The run folder's transaction around training, without training: a fresh run over an earlier one
puts it back when it stops before its first checkpoint and discards it after; Ctrl-C becomes one
``Interrupted`` saying what was kept; the SIGINT handler comes back; killed writes' temporaries go.
(``tests/cli/test_interrupted_training.py`` drives the same through real training processes.)"""

from __future__ import annotations

import signal

import pytest

from common_blocks.errors import Interrupted
from common_blocks.run_folder import RunPaths
from common_blocks.training.run_folder_transaction import run_folder_transaction


@pytest.fixture
def earlier(tmp_path) -> RunPaths:
    """A run folder holding an earlier run's checkpoint and config."""
    paths = RunPaths.of(tmp_path / "runs", "debug", 0)
    paths.root.mkdir(parents=True)
    paths.best.write_bytes(b"earlier best")
    paths.config.write_text("earlier: config\n")
    return paths


def test_ctrl_c_before_the_first_checkpoint_puts_the_earlier_run_back_and_the_sigint_handler(earlier):
    handler = signal.getsignal(signal.SIGINT)
    with (
        pytest.raises(
            Interrupted, match="before its first checkpoint; the earlier run in .* is kept as it was"
        ),
        run_folder_transaction(earlier, None, lead=True),
    ):
        assert not earlier.best.exists()  # set aside while the fresh run starts over
        earlier.config.write_text("new: config\n")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as Lightning leaves it after Ctrl-C
        raise KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is handler
    assert earlier.best.read_bytes() == b"earlier best"
    assert earlier.config.read_text() == "earlier: config\n"
    assert not earlier.previous_run.exists()


def test_after_the_first_checkpoint_a_failure_keeps_the_new_run_and_the_earlier_one_is_gone(earlier):
    with (
        pytest.raises(RuntimeError, match="later"),
        run_folder_transaction(earlier, None, lead=True) as progress,
    ):
        earlier.last.write_bytes(b"new last")
        progress.checkpoint_written({"epoch": 0, "global_step": 3}, earlier.last)
        raise RuntimeError("later")
    assert earlier.last.read_bytes() == b"new last"
    assert not earlier.best.exists() and not earlier.previous_run.exists()


def test_ctrl_c_between_a_checkpoints_write_and_its_notice_keeps_that_checkpoint(earlier):
    """On a loaded machine Ctrl-C can land after ``last.ckpt`` is renamed into place and before the
    Trainer's callback tells the transaction: the checkpoint on disk is the new run's all the same."""
    with (
        pytest.raises(
            Interrupted, match=r"stopped; .*last\.ckpt is kept: run the same command with --resume"
        ),
        run_folder_transaction(earlier, None, lead=True),
    ):
        earlier.last.write_bytes(b"new last")  # written; checkpoint_written not called yet
        raise KeyboardInterrupt
    assert earlier.last.read_bytes() == b"new last"
    assert not earlier.best.exists() and not earlier.previous_run.exists()


def test_a_fresh_run_that_fails_in_a_new_folder_leaves_no_folder(tmp_path):
    paths = RunPaths.of(tmp_path / "runs", "debug", 0)
    with pytest.raises(RuntimeError, match="fails"), run_folder_transaction(paths, None, lead=True):
        assert paths.root.is_dir()
        paths.config.write_text("new: config\n")
        raise RuntimeError("fails")
    assert list(tmp_path.iterdir()) == []


def test_killed_writes_temporaries_are_removed_and_another_rank_changes_nothing(earlier):
    temporary = earlier.root / f".{earlier.last.name}.1234abcd.tmp"
    temporary.write_bytes(b"half a checkpoint")
    with run_folder_transaction(earlier, None, lead=False):
        assert temporary.exists() and earlier.best.exists()  # only the lead process changes the folder
    with run_folder_transaction(earlier, None, lead=True):
        assert not temporary.exists()
