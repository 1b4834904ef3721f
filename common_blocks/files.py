"""File writing that never leaves a half-written output behind, checks of output paths, and the
one way input files are read (a missing or unreadable file is one line naming it).

``atomic_output`` writes one file through a temporary beside it; ``staged_outputs`` writes several
and renames them into place together, putting the old files back if a rename fails, so that a
command's outputs change all together or not at all. ``check_output_file`` and ``check_output_dir``
tell, before any expensive work, whether an output can be written where the user asked. Every
failure to write an output (a folder where a file is wanted, a read-only folder, a full disk) is an
``OutputError``: one line naming the output. Outputs that are whole folders build on these in
``output_folders``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from common_blocks.errors import PipelineError

# errno values that say the output cannot be written, whatever the code writing it: never a bug.
WRITE_ERRNOS = frozenset(
    code
    for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG, errno.EROFS)
    if code is not None
)


class OutputError(PipelineError):
    """An output cannot be written where it was asked for; the message names it."""


def describe_error(error: OSError) -> str:
    """The system's reason for ``error``, as an OutputError's message gives it."""
    return error.strerror or str(error)


def read_input(path: str | os.PathLike, error: type[PipelineError], missing: str = "file not found") -> bytes:
    """The bytes of an input file; a missing or unreadable one raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return path.read_bytes()
    except OSError as problem:
        raise error(f"{path}: cannot read ({describe_error(problem)})") from None


# Staging folders of ``output_folders`` and the folders their files are for: errors name the latter.
STAGING_FOLDERS: dict[Path, Path] = {}


def _shown(path: Path) -> Path:
    """Where ``path`` ends up: its place in the final folder when it is staged in a staging folder."""
    for staging, final in STAGING_FOLDERS.items():
        if path.is_relative_to(staging):
            return final / path.relative_to(staging)
    return path


def is_write_failure(error: OSError) -> bool:
    """Whether ``error`` says that the storage refused a write (full disk, quota, read-only file
    system), as opposed to a bug in the caller."""
    return error.errno in WRITE_ERRNOS


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path with none)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_location(target: Path, what: str) -> None:
    """The nearest existing ancestor of ``target`` must be a writable folder."""
    existing = _first_existing(target.parent) if target.parent != target else target
    if not existing.is_dir():
        raise OutputError(f"{target}: cannot be created, {existing} is a file, not a folder ({what})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: cannot be written, the folder {existing} is not writable ({what})")


def _named(path: str | os.PathLike, what: str) -> Path:
    if not os.fspath(path):
        raise OutputError(f"empty path given for the {what}")
    return Path(path)


def check_output_file(path: str | os.PathLike, what: str = "the output") -> Path:
    """``path`` as the file an output will be (over)written to; an OutputError naming it when that
    cannot be done: it is a folder or another non-file, its folder lies under a file, the folder (or
    the existing file) is read-only. A symbolic link stands for the file it points to, which is the
    one replaced. Missing folders are fine: the writer creates them."""
    target = _named(path, what)
    if target.is_symlink():
        target = target.resolve()
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; {what} needs a file path")
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):
        raise OutputError(f"{target}: not a regular file; refusing to replace it ({what})")
    _check_location(target, what)
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(f"{target}: is read-only; not replacing it ({what})")
    return target


def check_output_dir(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """``path`` as a folder outputs will be written into; an OutputError naming it when it is a file,
    lies under a file or is (or would be created in) a read-only folder."""
    target = _named(path, what)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: is a file; {what} needs a folder")
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise OutputError(f"{target}: the folder is not writable ({what})")
        return target
    _check_location(target, what)
    return target


def make_parents(target: Path, what: str) -> list[Path]:
    """Create the missing folders above ``target``; returns them, deepest first, to remove on failure."""
    missing = []
    for folder in target.parents:
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{target}: cannot create the folder for {what} ({describe_error(error)})"
        ) from None
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove those of ``folders`` (``make_parents``' list, deepest first) that are empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def current_umask() -> int:
    """The process's umask, read without changing it."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StagedOutputs:
    """Outputs written to temporaries beside their targets, renamed into place by ``commit`` in the
    order they were staged. See ``staged_outputs``."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (target, temporary)
        self._created: list[Path] = []  # folders made for the outputs, removed again on failure

    @property
    def targets(self) -> list[Path]:
        return [target for target, _ in self._staged]

    @contextlib.contextmanager
    def file(self, path: str | os.PathLike, what: str = "the output") -> Iterator[Path]:
        """Yield the temporary to write ``path``'s new content to; a failed write (full disk, ...) is
        an OutputError naming ``path``."""
        target = check_output_file(path, what)
        if target in self.targets:
            raise ValueError(f"{target} staged twice")
        self._created += make_parents(target, what)
        try:
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as error:
            raise OutputError(f"{_shown(target)}: cannot write {what} ({describe_error(error)})") from None
        os.close(handle)
        temporary = Path(name)
        self._staged.append((target, temporary))
        _STAGED.add(temporary)
        try:
            yield temporary
        except OSError as error:
            if not (is_write_failure(error) or _names(error, temporary)):
                raise
            raise OutputError(f"{_shown(target)}: cannot write {what} ({describe_error(error)})") from None

    def adopt(self, path: str | os.PathLike, temporary: Path) -> None:
        """Stage a file already written (on the file system of ``path``) as ``path``'s new content."""
        target = check_output_file(path)
        self._created += make_parents(target, "the output")
        self._staged.append((target, temporary))

    def commit(self) -> None:
        """Rename every temporary over its target, in order. If a rename fails, the targets already
        replaced get their previous content back (or are removed if they are new) and the error
        names the output that could not be written."""
        mode = 0o666 & ~current_umask()  # mkstemp makes the temporaries owner-only
        several = len(self._staged) > 1
        replaced: list[tuple[Path, Path | None]] = []  # (target, backup of its old content)
        backup: Path | None = None
        try:
            for target, temporary in self._staged:
                backup = _backup(target) if several and target.exists() else None
                os.chmod(temporary, mode)
                os.replace(temporary, target)
                replaced.append((target, backup))
                backup = None
        except OSError as error:
            if backup is not None:
                backup.unlink(missing_ok=True)
            restored = _restore(replaced)
            failed = _shown(self._staged[len(replaced)][0])
            kept = f"; {', '.join(str(_shown(p)) for p in restored)} left as before" if restored else ""
            raise OutputError(f"{failed}: cannot write it ({describe_error(error)}){kept}") from None
        for _, old in replaced:
            if old is not None:
                old.unlink(missing_ok=True)
        self._created = []

    def discard(self) -> None:
        """Remove the temporaries (and the folders made for them, if they are empty)."""
        for _, temporary in self._staged:
            _STAGED.discard(temporary)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                temporary.unlink()
        remove_empty_folders(self._created)
        self._staged, self._created = [], []


def _names(error: OSError, path: Path) -> bool:
    return error.filename is not None and Path(os.fsdecode(error.filename)) == path


def _backup(target: Path) -> Path:
    """A second name of ``target``'s current content beside it: a hard link where the file system
    has them (no copy; the target stays in place throughout), else a copy."""
    backup = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def _restore(replaced: list[tuple[Path, Path | None]]) -> list[Path]:
    """Put back the old content of the replaced targets (remove the new ones); returns the targets
    restored."""
    restored = []
    for target, backup in reversed(replaced):
        with contextlib.suppress(OSError):
            if backup is None:
                target.unlink()
            else:
                os.replace(backup, target)
            restored.append(target)
    return restored


# The temporaries of the outputs being staged: ``atomic_output`` on one of them (a ``save`` method
# called with the temporary) writes it directly instead of staging a temporary of the temporary.
_STAGED: set[Path] = set()


@contextlib.contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Several outputs that appear together: stage each with ``outputs.file(path)``, write it there;
    when the block succeeds they are renamed into place in the order staged (put the file readers
    take as the sign of a finished run last). When it fails, no target has changed."""
    outputs = StagedOutputs()
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "the output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only when the block succeeds.

    A crash or an exception inside the block leaves ``path`` as it was (absent or the old file); a
    path that cannot be written, or a write the storage refuses (full disk), is an OutputError naming
    ``path``.
    """
    if Path(path) in _STAGED:
        yield Path(path)
        return
    with staged_outputs() as outputs, outputs.file(path, what) as temporary:
        yield temporary


# How an output relates to an input, the most telling first: it is the input, lies inside it, holds it.
_RELATIONS = ("is", "lies inside", "holds")


def _relation(out: Path, path: Path, folder: bool) -> str | None:
    """How the resolved ``out`` relates to the input ``path``: None when apart (inside a path that is
    not a ``folder`` input counts as apart)."""
    where = Path(os.path.realpath(path))
    if out == where:
        return "is"
    if folder and out.is_relative_to(where):
        return "lies inside"
    return "holds" if where.is_relative_to(out) else None


def check_apart(
    out: Path, what: str, *, holds: Iterable[tuple[str, Path]], within: Iterable[tuple[str, Path]] = ()
) -> None:
    """A command never writes among, or replaces, what it reads: ``out`` must not be or hold any of
    ``holds`` (files such as configs and checkpoints, or folders that must not be replaced) nor lie
    inside any folder of ``within`` (the data, a run, an export); a description and a path each.
    Paths are compared resolved (symbolic links, ``..``, relative or absolute), so no spelling of an
    input gets past. An OutputError naming both otherwise."""
    root = Path(os.path.realpath(out))
    inputs = [*((name, path, True) for name, path in within), *((name, path, False) for name, path in holds)]
    related = [
        (relation, name, path)
        for name, path, folder in inputs
        if (relation := _relation(root, path, folder)) is not None
    ]
    if related:
        relation, name, path = min(related, key=lambda found: _RELATIONS.index(found[0]))
        raise OutputError(
            f"{out}: {relation} {name} {path}, an input of this command; write {what} elsewhere"
        )
