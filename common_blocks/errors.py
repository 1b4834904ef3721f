"""Errors the command line reports as one line, without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar


class PipelineError(Exception):
    """Bad input the user can fix: the message says what is wrong and where."""


class DataError(PipelineError):
    """A label file, submission, image or dataset folder is malformed or inconsistent."""


class ConfigError(PipelineError):
    """A config file or command-line override is invalid."""


ReturnT = TypeVar("ReturnT")


def cli_entry(main: Callable[..., ReturnT]) -> Callable[..., ReturnT]:
    """Wrap a command-line ``main``: a PipelineError becomes ``error: ...`` on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
