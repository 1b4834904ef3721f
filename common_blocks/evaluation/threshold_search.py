"""Exact grid search of the post-processing on out-of-fold statistics.

Classes are scored independently (every (image, class) pair counts once in the competition mean),
so the best setting overall is the best setting of each class. For a class, every combination of
pixel threshold t, minimum component size m, minimum area a, gate g and gate factor f is scored: a
pair keeps its predicted mask iff ``A[t, m] >= a`` (``>= a * f`` when the classifier probability is
below g; f infinite is the hard gate, which drops it), and then scores ``2 I / (A + G)``; otherwise
its prediction is empty and it scores 1 when the truth is empty too, else 0. Scores are exact sums
over the images, not estimates.

Ties go to the earliest grid values, in the priority threshold, min_size, min_area, gate, gate factor
(the first maximum of the score table in that order). Each score is a plain sum down one column of an
(images x settings) array, so settings that keep the same masks get bit-identical scores and tie.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from common_blocks.config_io import describe_issue, validate_strict
from common_blocks.data.formats import CLASS_IDS
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.metric import PairSums, dice_from_areas, pair_sums
from common_blocks.evaluation.oof_stats import N_CLASSES, OofStats
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.evaluation.search_grid import (
    DEFAULT_GATES,
    DEFAULT_MIN_AREAS,
    as_grid,
    min_size_grid,
    threshold_grid,
)
from common_blocks.files import atomic_output, read_input

RESULT_FORMAT_VERSION = 2  # 2 added the gate factors; files of version 1 read as the hard gate
HARD_GATE = math.inf  # the gate factor of the hard gate; None in configs and files
DEFAULT_GATE_FACTORS = (None,)


@dataclass(eq=False)
class SearchResult:
    """The best post-processing per class, its scores, and the score of every setting on the grid."""

    config: PostprocessConfig
    class_scores: np.ndarray  # (4,) mean Dice of each class at its chosen setting
    score: float  # competition score: mean of class_scores
    n_images: int
    thresholds: np.ndarray  # (T,)
    min_sizes: np.ndarray  # (M,)
    min_areas: np.ndarray  # (A,)
    gates: np.ndarray  # (G,)
    gate_factors: np.ndarray  # (F,), HARD_GATE for the hard gate
    scores: np.ndarray  # (4, T, M, A, G, F) mean Dice of each class for every setting

    def threshold_curves(self) -> np.ndarray:
        """(4, T): each class's best score at each pixel threshold, over the other parameters (for plots)."""
        return self.scores.max(axis=(2, 3, 4, 5))

    def to_dict(self) -> dict:
        return {
            "format_version": RESULT_FORMAT_VERSION,
            "score": self.score,
            "class_scores": self.class_scores.tolist(),
            "n_images": self.n_images,
            "config": self.config.model_dump(mode="json"),
            "grid": {
                "thresholds": self.thresholds.tolist(),
                "min_sizes": self.min_sizes.tolist(),
                "min_areas": self.min_areas.tolist(),
                "gates": self.gates.tolist(),
                "gate_factors": _factors_as_config(self.gate_factors),
            },
            "scores": self.scores.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> SearchResult:
        """Inverse of ``to_dict``; a malformed dict raises DataError naming the bad key, on one line.

        Values are strict: numbers are numbers (no strings or booleans), NaN is no score, scores lie
        in [0, 1], and the post-processing validates as ``PostprocessConfig`` does in a config file.
        """
        if not isinstance(data, dict):
            raise DataError(f"not a search result (expected a JSON object, got {type(data).__name__})")
        missing = [key for key in _RESULT_KEYS if key not in data]
        if missing:
            raise DataError(f"not a search result (missing {', '.join(missing)})")
        version = data["format_version"]
        if not _is_integer(version) or version not in (1, RESULT_FORMAT_VERSION):
            raise DataError(
                f"search result format version {version!r}, this code reads {RESULT_FORMAT_VERSION}"
            )
        try:
            config = validate_strict(PostprocessConfig, data["config"])
        except ValidationError as error:
            raise DataError(f"not a search result: config.{describe_issue(error)}") from None
        except (TypeError, ValueError) as error:
            raise DataError(f"not a search result: config: {error}") from None
        n_images = data["n_images"]
        if not _is_integer(n_images) or n_images < 1:
            raise DataError(f"not a search result: n_images: expected a whole number >= 1, got {n_images!r}")
        grid = data["grid"]
        if not isinstance(grid, dict):
            raise DataError(f"not a search result: grid: expected a JSON object, got {type(grid).__name__}")
        axes = {}
        for name, make_grid in _GRIDS.items():
            if name not in grid:
                raise DataError(f"not a search result: grid.{name} missing")
            values = _scores(grid[name], f"grid.{name}", low=-np.inf, high=np.inf)
            try:
                axes[name] = make_grid(values)
            except ConfigError as error:
                raise DataError(f"not a search result: grid.{error}") from None
        factors = grid.get("gate_factors", [None]) if version == 1 else grid.get("gate_factors")
        if not isinstance(factors, list) or not all(f is None or _plain_numbers(f) for f in factors):
            raise DataError("not a search result: grid.gate_factors: expected a list of numbers and nulls")
        try:
            axes["gate_factors"] = gate_factor_grid(factors)
        except ConfigError as error:
            raise DataError(f"not a search result: grid.{error}") from None
        scores = _scores(data["scores"], "scores")
        if version == 1:
            scores = scores[..., None]
        score = _scores(data["score"], "score")
        if score.ndim:
            raise DataError("not a search result: score: expected one number")
        result = cls(
            config=config,
            class_scores=_scores(data["class_scores"], "class_scores"),
            score=float(score),
            n_images=int(n_images),
            scores=scores,
            **axes,
        )
        grids = (result.thresholds, result.min_sizes, result.min_areas, result.gates, result.gate_factors)
        expected = (N_CLASSES, *(g.size for g in grids))
        if result.scores.shape != expected or result.class_scores.shape != (N_CLASSES,):
            raise DataError(
                f"search result: score table of shape {result.scores.shape} and class scores of shape "
                f"{result.class_scores.shape}, expected {expected} and {(N_CLASSES,)}"
            )
        return result

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchResult:
        """Read a file written by ``save``; a missing, foreign or malformed file raises DataError
        naming it (and the bad key), on one line."""
        path = Path(path)
        text = read_input(path, DataError, "search result not found")
        try:
            data = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}: not JSON (not UTF-8 text: byte 0x{error.object[error.start]:02x})"
            ) from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not JSON ({error})") from None
        except RecursionError:
            raise DataError(f"{path}: not JSON (nested too deeply)") from None
        try:
            return cls.from_dict(data)
        except DataError as error:
            raise DataError(f"{path}: {error}") from None


_RESULT_KEYS = ("format_version", "score", "class_scores", "n_images", "config", "grid", "scores")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_numbers(value: Any) -> bool:
    """Whether ``value`` is a number or (nested) lists of numbers, booleans and strings excluded."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return False
    return True


def _scores(value: Any, key: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """A number or a rectangular table of them as float64, every one finite and in [low, high]."""
    if not _plain_numbers(value):
        raise DataError(f"not a search result: {key}: expected numbers")
    try:
        array = np.asarray(value, dtype=np.float64)
    except ValueError:
        raise DataError(f"not a search result: {key}: expected a rectangular table of numbers") from None
    bad = ~np.isfinite(array) | (array < low) | (array > high)
    if bad.any():
        shown = float(array[bad].flat[0])
        where = "" if array.ndim == 0 else f" at {list(map(int, np.argwhere(bad)[0]))}"
        raise DataError(
            f"not a search result: {key}: {shown!r}{where} is not a finite number in [{low:g}, {high:g}]"
        )
    return array


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


def _factors_as_config(factors: np.ndarray) -> list[float | None]:
    """Gate factors as configs and files write them: None for the hard gate."""
    return [None if factor == HARD_GATE else float(factor) for factor in factors]


_GRIDS = {
    "thresholds": threshold_grid,
    "min_sizes": min_size_grid,
    "min_areas": min_area_grid,
    "gates": gate_grid,
}


def _kept(area: np.ndarray, gate: np.ndarray, min_area: float, min_gate: float, factor: float) -> np.ndarray:
    """Steps 4-5: whether a mask survives (``ClassPostprocess.required_area``); a NaN gate probability
    (no classifier) never gates it. The gate is compared in float64, as ``postprocess_mask`` compares it."""
    gated = gate.astype(np.float64) < float(min_gate)
    if factor == HARD_GATE:
        return (area >= min_area) & ~gated
    return area >= np.where(gated, min_area * factor, float(min_area))


def _class_score_sums(
    area: np.ndarray,
    intersection: np.ndarray,
    truth_area: np.ndarray,
    gate: np.ndarray,
    min_areas: np.ndarray,
    gates: np.ndarray,
    factors: np.ndarray,
) -> np.ndarray:
    """(A, G, F, K) sums of Dice over the N images for K = T*M columns of (N, K) area and intersection."""
    truth_area = truth_area.astype(np.int64)[:, None]
    kept_dice = dice_from_areas(intersection.astype(np.int64), area.astype(np.int64), truth_area)
    dropped_dice = np.broadcast_to((truth_area == 0).astype(np.float64), kept_dice.shape)
    sums = np.empty((min_areas.size, gates.size, factors.size, area.shape[1]))
    for i, min_area in enumerate(min_areas):
        for j, min_gate in enumerate(gates):
            for f, factor in enumerate(factors):
                kept = _kept(area, gate[:, None], min_area, min_gate, factor)
                sums[i, j, f] = np.where(kept, kept_dice, dropped_dice).sum(axis=0)
    return sums


def _searched_gates(
    stats: OofStats, gates: Sequence[float] | np.ndarray, factors: Sequence[float | None] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The gate and gate-factor grids, reduced to gate 0 and the hard gate when there is no
    classifier (every setting would tie)."""
    missing = np.isnan(stats.gate)
    if missing.all():
        return np.zeros(1), np.array([HARD_GATE])
    if missing.any():
        raise DataError(
            f"gate probabilities are missing for {int(missing.any(axis=1).sum())} of {stats.n_images} "
            "images; attach them to all images or to none"
        )
    return gate_grid(gates), gate_factor_grid(factors)


def search(
    stats: OofStats,
    min_areas: Sequence[int] | np.ndarray = DEFAULT_MIN_AREAS,
    gates: Sequence[float] | np.ndarray = DEFAULT_GATES,
    gate_factors: Sequence[float | None] | np.ndarray = DEFAULT_GATE_FACTORS,
) -> SearchResult:
    """Score every setting of the grid (the stats' thresholds and min sizes x ``min_areas`` x ``gates``
    x ``gate_factors``) and pick each class's best; without classifier probabilities only gate 0 is
    searched."""
    if stats.n_images == 0:
        raise DataError("no images in the OOF stats")
    min_areas = min_area_grid(min_areas)
    gates, factors = _searched_gates(stats, gates, gate_factors)
    n_thresholds, n_sizes = stats.thresholds.size, stats.min_sizes.size
    scores = np.empty((N_CLASSES, n_thresholds, n_sizes, min_areas.size, gates.size, factors.size))
    chosen = []
    for k in range(N_CLASSES):
        sums = _class_score_sums(
            stats.area[:, k].reshape(stats.n_images, -1),
            stats.intersection[:, k].reshape(stats.n_images, -1),
            stats.truth_area[:, k],
            stats.gate[:, k],
            min_areas,
            gates,
            factors,
        )
        scores[k] = (
            (sums / stats.n_images)
            .reshape(min_areas.size, gates.size, factors.size, n_thresholds, n_sizes)
            .transpose(3, 4, 0, 1, 2)
        )
        t, m, a, g, f = np.unravel_index(np.argmax(scores[k]), scores[k].shape)
        chosen.append(
            ClassPostprocess(
                threshold=float(stats.thresholds[t]),
                min_size=int(stats.min_sizes[m]),
                min_area=int(min_areas[a]),
                gate=float(gates[g]),
                gate_factor=_factors_as_config(factors[f : f + 1])[0],
                fill_holes=stats.fill_holes[k],
            )
        )
    class_scores = scores.reshape(N_CLASSES, -1).max(axis=1)
    return SearchResult(
        config=PostprocessConfig(classes=tuple(chosen)),
        class_scores=class_scores,
        score=float(class_scores.mean()),
        n_images=stats.n_images,
        thresholds=stats.thresholds,
        min_sizes=stats.min_sizes,
        min_areas=min_areas,
        gates=gates,
        gate_factors=factors,
        scores=scores,
    )


def _grid_index(grid: np.ndarray, value: float, name: str, class_id: int) -> int:
    matches = np.flatnonzero(grid == value)
    if matches.size == 0:
        raise ConfigError(f"class {class_id}: {name} {value} is not on the OOF stats grid {grid.tolist()}")
    return int(matches[0])


def pair_outcomes(stats: OofStats, config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) Dice and (N, 4) bool 'predicted non-empty' of every (image, class) pair under ``config``,
    exactly, from the statistics alone.

    Each class's threshold and min_size must lie on the stats grid and its fill_holes match the stats.
    """
    dice = np.empty((stats.n_images, N_CLASSES))
    predicted = np.empty((stats.n_images, N_CLASSES), dtype=bool)
    for k, (class_id, cfg) in enumerate(zip(CLASS_IDS, config.classes, strict=True)):
        if cfg.fill_holes != stats.fill_holes[k]:
            raise ConfigError(
                f"class {class_id}: fill_holes {cfg.fill_holes}, but the OOF stats were made with "
                f"{stats.fill_holes[k]}"
            )
        t = _grid_index(stats.thresholds, cfg.threshold, "threshold", class_id)
        m = _grid_index(stats.min_sizes, cfg.min_size, "min_size", class_id)
        area = stats.area[:, k, t, m].astype(np.int64)
        factor = HARD_GATE if cfg.gate_factor is None else cfg.gate_factor
        kept = _kept(area, stats.gate[:, k], cfg.min_area, cfg.gate, factor)
        pred_area = np.where(kept, area, 0)
        intersection = np.where(kept, stats.intersection[:, k, t, m].astype(np.int64), 0)
        dice[:, k] = dice_from_areas(intersection, pred_area, stats.truth_area[:, k].astype(np.int64))
        predicted[:, k] = pred_area > 0
    return dice, predicted


def evaluate(stats: OofStats, config: PostprocessConfig) -> PairSums:
    """Score one post-processing setting on the statistics, as ``metric.pair_sums`` of the pairs:
    ``metric.summarize`` turns it into the score, positive-pair Dice and FP/FN pair counts."""
    dice, predicted = pair_outcomes(stats, config)
    return pair_sums(dice, ~predicted, stats.truth_area == 0)
