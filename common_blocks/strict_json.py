"""Strict JSON (RFC 8259: no bare NaN or Infinity) of results holding numpy numbers, for every
``--json`` of the command line and the benchmarks' reports. Imports no third-party module."""

from __future__ import annotations

import json
import math
import numbers


def strict_json(value: object) -> object:
    """``value`` with every NaN or infinite number replaced by None (JSON null) and numpy scalars
    made plain numbers, so that ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def print_json(value: object) -> None:
    """Print one line of strict JSON (RFC 8259: no bare NaN or Infinity); every ``--json`` uses it."""
    print(json.dumps(strict_json(value), allow_nan=False))
