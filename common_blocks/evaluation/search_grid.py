"""The search grid of the out-of-fold statistics and the threshold search: its default values and
the checks of a grid given in a config or read from a file.

A grid is strictly increasing (the statistics rely on nested masks) and in range; pixel thresholds
are at most ``MAX_LEVELS``, the levels the statistics count in uint8. Shared by the training and
ensemble configs, ``image_stats``, ``oof_stats`` and ``threshold_search``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import ConfigError

DEFAULT_THRESHOLDS = (0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80)
DEFAULT_MIN_SIZES = (0, 50, 100, 200, 400, 800)
DEFAULT_MIN_AREAS = (0, 200, 400, 600, 800, 1000, 1500, 2000, 3000, 4000, 6000, 8000)
DEFAULT_GATES = (0.0, 0.3, 0.4, 0.5, 0.6)
NO_FILL = (False,) * N_CLASSES
MAX_LEVELS = 255  # threshold levels are counted in uint8
HARD_GATE = math.inf  # the gate factor of the hard gate; None in configs and files
DEFAULT_GATE_FACTORS = (None,)


def one_line(values: object, limit: int = 80) -> str:
    """``values`` for an error line: arrays as lists, whitespace collapsed (numpy wraps long reprs), cut short."""
    text = " ".join(repr(values.tolist() if isinstance(values, np.ndarray) else values).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_grid(
    values: Sequence[float] | np.ndarray, name: str, dtype: type, low: float, high: float
) -> np.ndarray:
    """A search grid as a 1-d array, strictly increasing (the statistics rely on nested masks) and in range."""
    try:
        raw = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a list of numbers, got {one_line(values)}") from None
    if raw.ndim != 1 or raw.size == 0 or not np.isfinite(raw).all():
        raise ConfigError(f"{name}: expected a non-empty list of finite numbers, got {one_line(values)}")
    grid = raw.astype(dtype)
    if not np.array_equal(grid, raw):
        raise ConfigError(f"{name}: expected whole numbers, got {raw.tolist()}")
    if np.any(np.diff(grid) <= 0):
        raise ConfigError(f"{name}: values must be strictly increasing, got {grid.tolist()}")
    if grid[0] < low or grid[-1] > high:
        raise ConfigError(f"{name}: values must lie in [{low}, {high}], got {grid.tolist()}")
    return grid


def threshold_grid(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Pixel thresholds in [0, 1], at most 255 of them (levels are counted in uint8)."""
    grid = as_grid(values, "thresholds", np.float64, 0.0, 1.0)
    if grid.size > MAX_LEVELS:
        raise ConfigError(f"thresholds: at most {MAX_LEVELS} values, got {grid.size}")
    return grid


def min_size_grid(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Minimum component sizes in pixels; 0 keeps every component."""
    return as_grid(values, "min_sizes", np.int64, 0, np.iinfo(np.int32).max)


def fill_flags(values: Sequence[bool]) -> tuple[bool, bool, bool, bool]:
    """One hole-filling flag per class."""
    flags = tuple(bool(v) for v in values)
    if len(flags) != N_CLASSES:
        raise ConfigError(f"fill_holes: expected {N_CLASSES} flags (one per class), got {len(flags)}")
    return flags


def min_area_grid(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Minimum mask areas in pixels; 0 never drops a mask."""
    return as_grid(values, "min_areas", np.int64, 0, np.iinfo(np.uint32).max)


def gate_grid(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Gate thresholds on the classifier probability; 0 never drops a mask."""
    return as_grid(values, "gates", np.float64, 0.0, 1.0)


def gate_factor_grid(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Gate factors, increasing, each >= 1, the hard gate (None or infinity) at most once and last."""
    values = list(values)
    hard = [value is None or value == HARD_GATE for value in values]
    if not values or sum(hard) > 1 or (any(hard) and not hard[-1]):
        raise ConfigError(
            f"gate_factors: expected increasing numbers >= 1, then optionally null (the hard gate), got {values}"
        )
    finite = values[:-1] if hard[-1] else values
    grid = as_grid(finite, "gate_factors", np.float64, 1.0, 1e9) if finite else np.zeros(0)
    return np.append(grid, HARD_GATE) if hard[-1] else grid
