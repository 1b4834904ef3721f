"""One writer at a time for an output that a command builds over a while: a run folder (``train``),
an ensemble's tuned thresholds (``oof``), the runs of an ensemble (``sweep``).

Two processes writing one output at once mix their files (two trainings of one run folder: one
crashed on the other's ``.previous-run``, or on its TensorBoard file, and the folder kept parts of
both). ``one_writer`` takes an OS lock (``fcntl.flock``) on a hidden file beside the output,
``.NAME.lock``, before anything is touched, and holds it until the block ends. The kernel releases
the lock when its process ends, however it ends, so a lock file left by a killed process never
blocks. The file holds the holder's pid, which a second writer's error names.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from common_blocks.errors import PipelineError
from common_blocks.files import OutputError, describe_error, remove_empty_folders

_ATTEMPTS = 10  # tries to open the lock file while other writers' clean-ups remove it or its folder


class Busy(PipelineError):
    """Another process is writing the output."""


def lock_file(target: Path) -> Path:
    """The lock file of ``target``, beside it: never inside, where ``--overwrite`` sets files aside."""
    return target.parent / f".{target.name}.lock"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is open on the file that is at ``path`` now."""
    try:
        there = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (there.st_dev, there.st_ino)


def _locked(lock: Path, target: Path, what: str) -> int:
    """An open descriptor of ``lock`` holding its exclusive lock, with this process's pid written in."""
    for _ in range(_ATTEMPTS):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # another writer's clean-up removed the folder just made: again
            continue
        except OSError as error:
            raise OutputError(
                f"{lock}: cannot create the lock file of {target} ({describe_error(error)})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise Busy(
                f"{target}: {what} by another process (pid {holder}); wait for it to end or stop it"
            ) from None
        # A holder removes the file before it lets the lock go: a lock then taken on that file is a
        # lock on nothing, and is taken again on the file now at the path.
        if _same_file(fd, lock):
            with contextlib.suppress(OSError):  # the pid is for others' messages; a full disk can do without
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputError(f"{lock}: cannot create the lock file of {target} (it keeps disappearing)")


# The lock descriptors this process holds. A forked child (a DataLoader worker) gets copies, which
# would keep the lock held after this process is killed until the child notices (seconds): the
# child closes its copies at once, leaving the lock to this process alone.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@contextlib.contextmanager
def one_writer(target: Path, what: str) -> Iterator[None]:
    """Hold ``target``'s lock for the block; a second writer gets a ``Busy`` error naming ``target``
    and the holder's pid (``what`` says what it is doing, e.g. "this run folder is being written").
    The folders made for the lock file are removed again when the block leaves them empty."""
    lock = lock_file(target)
    missing = [folder for folder in lock.parents if not folder.exists()]
    fd = _locked(lock, target, what)
    _HELD.add(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # still held: a writer that opened it meanwhile sees it is gone
        _HELD.discard(fd)
        os.close(fd)
        remove_empty_folders(missing)
