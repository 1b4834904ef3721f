"""Errors the command line reports as one line, without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar


def _without_worker_traceback(message: str, error_type: type) -> str:
    """The original message of an error raised in a DataLoader worker process.

    torch re-raises it in the main process as ``error_type(text)``, where ``text`` is "Caught NAME
    in DataLoader worker process N.\\nOriginal Traceback (most recent call last): ..." and ends with
    the formatted exception, ``module.NAME: message``; other messages come back as they are.
    """
    head, _, rest = message.partition("\n")
    if not (head.startswith("Caught ") and " in DataLoader worker process " in head):
        return message
    if not rest.startswith("Original Traceback"):
        return message
    marker = f"{error_type.__module__}.{error_type.__qualname__}: "
    found = rest.rfind(marker)
    if found >= 0:
        return rest[found + len(marker) :].strip()
    lines = [line for line in rest.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else message


class PipelineError(Exception):
    """Bad input the user can fix: the message says what is wrong and where.

    Raised in a DataLoader worker, it reaches the main process with its own message, not with the
    worker's traceback pasted into it.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_without_worker_traceback(args[0], type(self)),)
        super().__init__(*args)


class DataError(PipelineError):
    """A label file, submission, image or dataset folder is malformed or inconsistent."""


class ConfigError(PipelineError):
    """A config file or command-line override is invalid."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a line saying what was kept and how to continue (``interrupted: ...``)."""


ReturnT = TypeVar("ReturnT")


def cli_entry(main: Callable[..., ReturnT]) -> Callable[..., ReturnT]:
    """Wrap a command-line ``main``: a PipelineError becomes ``error: ...`` on stderr and exit 2;
    Ctrl-C becomes ``interrupted`` (with what an ``Interrupted`` says) and exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as interrupt:
            detail = str(interrupt).strip()
            print(f"interrupted: {detail}" if detail else "interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
