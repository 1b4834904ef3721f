"""A run folder written whole or not at all, with ``--resume`` checked before anything changes.

``prepare_run_dir`` says where a resumed run continues, refusing before it touches the folder;
``run_folder_transaction`` is the rest, around the training: a fresh run over an earlier one
(``--overwrite``) sets that run aside (``SetAside``) until its own first checkpoint, and
``RunProgress`` puts it back if the new run fails or is interrupted before that; the temporaries a
killed write left (``stale_temporaries``) go; Ctrl-C becomes ``Interrupted`` naming what to resume
from, and the SIGINT handler Lightning leaves ignored is put back. ``runner.train_fold`` trains inside
it; ``cluster.plan`` settles what a killed run left with the same ``SetAside``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common_blocks.errors import Interrupted, PipelineError
from common_blocks.run_folder import RunPaths
from common_blocks.training.checkpoints import ResumePoint, read_resume_point

# A hidden folder of a run folder: the earlier run that a fresh run (--overwrite) replaces, kept until
# the new run has written its own checkpoint and put back if it fails before that.
_SET_ASIDE_COMPLETE = ".complete"  # written once every file of the earlier run is in previous_run


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class SetAside:
    """The earlier run of a run folder, moved into ``RunPaths.previous_run`` while a fresh run starts over there.

    ``discard`` deletes it (the new run has its own checkpoint); ``put_back`` removes what the new run
    wrote and moves the earlier run back, as it was. ``recover`` settles what a killed process left:
    the folder is put back unless a checkpoint of the new run exists.
    """

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.folder = paths.previous_run

    def move_aside(self) -> bool:
        """Move the earlier run's files aside (the run folder must exist); False when there were none."""
        present = [path for path in self.paths.run_files if path.exists() or path.is_symlink()]
        self.folder.mkdir()
        for path in present:
            os.replace(path, self.folder / path.name)
        (self.folder / _SET_ASIDE_COMPLETE).touch()
        return bool(present)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def put_back(self) -> None:
        complete = (self.folder / _SET_ASIDE_COMPLETE).exists()
        for path in self.paths.run_files:
            kept = self.folder / path.name
            # After a complete move everything in the run folder is the new run's; a move cut short
            # left each earlier file either here or there.
            if complete or kept.exists():
                _remove(path)
            if kept.exists() or kept.is_symlink():
                os.replace(kept, path)
        self.discard()

    def recover(self) -> None:
        if not self.folder.is_dir():
            return
        new_checkpoint = (self.folder / _SET_ASIDE_COMPLETE).exists() and (
            self.paths.last.exists() or self.paths.best.exists()
        )
        if new_checkpoint:
            self.discard()
        else:
            self.put_back()


def stale_temporaries(paths: RunPaths) -> list[Path]:
    """Temporaries (``atomic_output``'s ``.NAME.XXXX.tmp``, ``.NAME.XXXX.old``) of the run's files
    that a killed process left behind; a checkpoint's is as big as the checkpoint."""
    names = [(paths.root, path.name) for path in paths.run_files if path != paths.logs]
    names.append((paths.metrics.parent, paths.metrics.name))
    return sorted(
        temporary
        for folder, name in names
        for suffix in ("tmp", "old")
        for temporary in folder.glob(f".{name}.*.{suffix}")
        if temporary.is_file()
    )


def prepare_run_dir(paths: RunPaths, resume: bool, overwrite: bool, max_epochs: int) -> ResumePoint | None:
    """Where a resumed run continues (None: a fresh run); never silently reuses or discards earlier
    work. Only checks: a refused or failed resume (missing, unreadable or foreign ``last.ckpt``, or
    one that has trained ``max_epochs`` already) leaves the run folder untouched."""
    if resume:
        if not paths.last.is_file():
            raise PipelineError(f"--resume: no {paths.last} to resume from")
        # a run stopped between its fit and its summary (Ctrl-C in the final validation) is finished
        return read_resume_point(paths.last, max_epochs, fit_may_be_over=not paths.summary.is_file())
    if (paths.last.exists() or paths.best.exists()) and not overwrite:
        raise PipelineError(
            f"{paths.root} already has checkpoints; pass --resume to continue or --overwrite to start over"
        )
    return None


class RunProgress:
    """What this process's run has written: the newest ``last.ckpt`` (epoch, step). A fresh run's
    first checkpoint discards the earlier run set aside for it; failing before that, the fresh run
    leaves the folder as it found it."""

    def __init__(self, paths: RunPaths, set_aside: SetAside | None, created: list[Path]) -> None:
        self.paths = paths
        self.set_aside = set_aside
        self.created = created  # folders made for the run, deepest first
        self.last: tuple[int, int] | None = None
        self.fitted = False  # the fit is over; the best checkpoint is being validated
        self.kept_unnoticed = False  # a last.ckpt written just before a stop, before its notice came

    def checkpoint_written(self, checkpoint: dict[str, Any], path: Path) -> None:
        if self.set_aside is not None:
            self.set_aside.discard()
            self.set_aside, self.created = None, []
        if path.name == self.paths.last.name:
            self.last = (int(checkpoint.get("epoch", -1)), int(checkpoint.get("global_step", -1)))

    def failed(self) -> None:
        """The run stops early. Before its first checkpoint, a fresh run's partial files (config.yaml,
        logs) go, the earlier run comes back as it was and the folders made for the run are removed.

        The checkpoint on disk decides, not the notice of it: a stop between a checkpoint's write and
        ``checkpoint_written`` (Ctrl-C on a loaded machine) keeps that checkpoint. It is this run's, as
        the earlier run was set aside whole before the training started."""
        if self.set_aside is None:
            return
        if self.paths.last.is_file() or self.paths.best.is_file():
            self.set_aside.discard()
            self.kept_unnoticed = self.last is None and self.paths.last.is_file()
            if self.kept_unnoticed:
                with contextlib.suppress(PipelineError):
                    point = read_resume_point(self.paths.last, 0, fit_may_be_over=True)
                    self.last = (point.epoch, point.global_step)
        else:
            self.set_aside.put_back()
            for folder in self.created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
        self.set_aside = None

    def interrupted(self, resumed: ResumePoint | None, had_earlier_run: bool) -> Interrupted:
        """What Ctrl-C left: the checkpoint to resume from, if any."""
        label, last = self.paths.label, self.paths.last
        if self.fitted:
            return Interrupted(
                f"{label}: the fit was over, validating its best checkpoint was interrupted: the checkpoints "
                "are kept, summary.json is not written; the same command with --resume validates and writes it"
            )
        state = self.last or (resumed and (resumed.epoch, resumed.global_step))
        if state:
            epoch, step = state
            return Interrupted(
                f"training {label} stopped; {last} (epoch {epoch}, step {step}) is kept: "
                "run the same command with --resume to continue from it"
            )
        if self.kept_unnoticed:  # and unreadable for its step: --resume will say what it holds
            return Interrupted(
                f"training {label} stopped; {last} is kept: run the same command with --resume to continue from it"
            )
        if had_earlier_run:
            return Interrupted(
                f"training {label} stopped before its first checkpoint; the earlier run in "
                f"{self.paths.root} is kept as it was"
            )
        return Interrupted(
            f"training {label} stopped before its first checkpoint; nothing to resume, run it again to start over"
        )


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


@contextlib.contextmanager
def run_folder_transaction(paths: RunPaths, point: ResumePoint | None, lead: bool) -> Iterator[RunProgress]:
    """The run folder of a run resumed from ``point`` (None: a fresh run), changed whole or not at all
    by the training inside; yields the ``RunProgress`` that the Trainer tells of each checkpoint.

    ``lead``: this process owns the folder (another DDP rank only reads it and changes nothing). It
    makes the folder, sets a fresh run's predecessor aside and removes stale temporaries; when the
    training fails before the first checkpoint, puts the folder back as it was. Ctrl-C is raised as
    ``Interrupted`` naming the checkpoint to resume from; Lightning leaves SIGINT ignored after it,
    so the handler from before is put back once the folder is settled.
    """
    sigint = signal.getsignal(signal.SIGINT)
    created = missing_folders(paths.root) if lead else []
    set_aside, had_earlier_run = None, False
    if lead:
        paths.root.mkdir(parents=True, exist_ok=True)
        if point is None:
            set_aside = SetAside(paths)
            had_earlier_run = set_aside.move_aside()
    progress = RunProgress(paths, set_aside, created)
    try:
        if lead:
            for temporary in stale_temporaries(paths):
                temporary.unlink(missing_ok=True)
        yield progress
    except KeyboardInterrupt:
        if lead:
            progress.failed()
        raise progress.interrupted(point, had_earlier_run) from None
    except BaseException:
        if lead:
            progress.failed()
        raise
    finally:
        if sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
