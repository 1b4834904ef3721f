"""argparse types of counts, shared by the command line and the benchmarks. Imports nothing beyond
the standard library, so that either parses its arguments before anything heavy loads."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


POSITIVE = integer_at_least(1)
NON_NEGATIVE = integer_at_least(0)
