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
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common_blocks.data.formats import CLASS_IDS
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.metric import PairSums, dice_from_areas, pair_sums
from common_blocks.evaluation.oof_stats import N_CLASSES, OofStats
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.evaluation.search_grid import (
    DEFAULT_GATE_FACTORS,
    DEFAULT_GATES,
    DEFAULT_MIN_AREAS,
    HARD_GATE,
    gate_factor_grid,
    gate_grid,
    min_area_grid,
)
from common_blocks.evaluation.search_result_file import RESULT_FORMAT_VERSION, read_search_result
from common_blocks.files import atomic_output


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

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchResult:
        """Read a file written by ``save`` (``search_result_file``); a missing, foreign or malformed
        file raises DataError naming it (and the bad key), on one line."""
        file = read_search_result(path)
        grid = file.grid
        return cls(
            config=file.config,
            class_scores=file.class_scores,
            score=float(file.score),
            n_images=file.n_images,
            thresholds=grid.thresholds,
            min_sizes=grid.min_sizes,
            min_areas=grid.min_areas,
            gates=grid.gates,
            gate_factors=grid.gate_factors,
            scores=file.scores,
        )


def _factors_as_config(factors: np.ndarray) -> list[float | None]:
    """Gate factors as configs and files write them: None for the hard gate."""
    return [None if factor == HARD_GATE else float(factor) for factor in factors]


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
