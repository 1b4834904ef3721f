"""Outputs that are whole folders: built beside their place, moved in only once complete.

``staged_folder`` writes a set of files that appear in a folder together (a report, a synthetic data
set); ``replaced_folder`` replaces a folder as a whole, after ``check_replaceable`` has made sure it is
one this pipeline wrote (``is_marked``), and ``remove_stale_temporaries`` settles what a killed
replacement left. Built on ``files``' staged outputs, so errors about a staged file name its final
place; single files are ``files``' own.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from common_blocks.files import (
    STAGING_FOLDERS,
    OutputError,
    StagedOutputs,
    check_output_dir,
    current_umask,
    describe_error,
    make_parents,
    remove_empty_folders,
)


def _staging_folder(target: Path, what: str, make: Callable[[], Path]) -> tuple[Path, list[Path]]:
    """The folder ``make`` creates beside ``target`` (its missing parents made first), registered so
    that errors name ``target``; and the parents made, to remove on failure."""
    created = make_parents(target, what)
    try:
        staging = make()
    except OSError as error:
        remove_empty_folders(created)
        raise OutputError(f"{target}: cannot write {what} ({describe_error(error)})") from None
    STAGING_FOLDERS[staging] = target
    return staging, created


@contextlib.contextmanager
def staged_folder(
    path: str | os.PathLike, what: str = "the output folder", last: tuple[str, ...] = ("index.html",)
) -> Iterator[Path]:
    """Yield an empty folder beside ``path`` to write a set of files into; only when the block
    succeeds do they move into ``path`` (``path`` is created if missing), the names in ``last`` after
    the others, with ``StagedOutputs.commit``'s put-back if a move fails. A failure inside the block
    leaves ``path`` as it was; errors about a staged file name its final place in ``path``.
    """
    target = check_output_dir(path, what)
    staging, created = _staging_folder(
        target,
        what,
        lambda: Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)),
    )
    try:
        yield staging
        if not target.exists():
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it owner-only
            try:
                os.rename(staging, target)
            except OSError as error:
                raise OutputError(f"{target}: cannot write {what} ({describe_error(error)})") from None
            created = []
            return
        for folder in sorted(p for p in staging.rglob("*") if p.is_dir()):
            try:
                (target / folder.relative_to(staging)).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(
                    f"{target / folder.relative_to(staging)}: cannot create it ({describe_error(error)})"
                ) from None
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(staging).as_posix() in last)
        outputs = StagedOutputs()
        try:
            for file in files:
                outputs.adopt(target / file.relative_to(staging), file)
            outputs.commit()
        finally:
            outputs.discard()
        created = []
    finally:
        del STAGING_FOLDERS[staging]
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(created)


def is_marked(folder: Path, marker: str, format_: str) -> bool:
    """Whether ``folder/marker`` is a JSON object whose ``format`` is ``format_``: how a folder that
    this pipeline wrote is told from any other."""
    try:
        return json.loads((folder / marker).read_text(encoding="utf-8")).get("format") == format_
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def check_replaceable(
    path: str | os.PathLike, what: str, *, overwrite: bool, kind: str, marker: tuple[str, str]
) -> Path:
    """``path`` as the folder ``replaced_folder`` will write: new or empty, or, with ``overwrite``, a
    ``kind`` this pipeline wrote (``is_marked`` by ``marker``: file name and format). Any other folder
    is an OutputError and is never touched: the user's files, data or configs are not ours to delete.
    What a killed earlier run left beside it is cleared first (``remove_stale_temporaries``), so
    that an earlier folder it had set aside is back in place before it is judged."""
    target = check_output_dir(path, what)
    if target.parent.is_dir():
        remove_stale_temporaries(target)
    if Path.cwd().resolve().is_relative_to(target.resolve()):
        raise OutputError(f"{target}: is the working directory or holds it; give {what} a folder of its own")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputError(f"{target}: is not empty; pass --overwrite to replace the {kind} there")
        if not is_marked(target, *marker):
            raise OutputError(
                f"{target}: is not {kind} this pipeline wrote, so --overwrite leaves it alone; choose "
                "another folder, or empty this one yourself"
            )
    return target


# ``replaced_folder``'s own temporaries beside the target: ``.NAME.PID-HEX.tmp`` (being built) and
# ``.NAME.PID-HEX.old`` (the earlier folder, set aside while the new one is renamed in).
def _own_temporary(target: Path, entry: Path) -> tuple[int, str] | None:
    match = re.fullmatch(rf"\.{re.escape(target.name)}\.(\d+)-[0-9a-f]{{8}}\.(tmp|old)", entry.name)
    return (int(match[1]), match[2]) if match and entry.is_dir() and not entry.is_symlink() else None


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove what a killed ``replaced_folder`` of ``target`` left (its process no longer runs): a
    half-built folder is deleted; an earlier folder set aside while ``target`` is missing is put back
    (the kill came between the two renames). Returns what was removed or restored."""
    handled = []
    for entry in sorted(target.parent.glob(f".{glob.escape(target.name)}.*")):
        owner = _own_temporary(target, entry)
        if owner is None or _is_running(owner[0]):
            continue
        if owner[1] == "old" and not target.exists():
            os.rename(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)
        handled.append(entry)
    return handled


@contextlib.contextmanager
def replaced_folder(target: Path, what: str) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` (checked with ``check_replaceable`` first); when the
    block succeeds it takes ``target``'s place as a whole: the earlier folder is set aside, the new
    one renamed in, and only then is the earlier one deleted. A failure leaves ``target`` as it was,
    and a later run removes what a killed one left (``remove_stale_temporaries``)."""
    stem = f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}"
    previous = target.with_name(f"{stem}.old")

    def make() -> Path:
        target.with_name(f"{stem}.tmp").mkdir()
        return target.with_name(f"{stem}.tmp")

    staging, created = _staging_folder(target, what, make)
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        try:
            if target.exists():
                os.rename(target, previous)
            os.rename(staging, target)
        except OSError as error:
            if previous.exists() and not target.exists():
                os.rename(previous, target)
            raise OutputError(f"{target}: cannot write {what} ({describe_error(error)})") from None
        created = []
    finally:
        del STAGING_FOLDERS[staging]
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
        remove_empty_folders(created)
