"""Offline scorer: any submission against any labels, either format on either side, on every image of
the truth or on a folds file's local test split, alone or against a baseline submission."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common_blocks.data.folds import local_test_ids
from common_blocks.data.formats import (
    detect_format,
    read_csv_file,
    read_label_rows,
    read_labels,
    rows_to_table,
)
from common_blocks.errors import DataError
from common_blocks.evaluation.metric import ScoreSummary, pair_dice, pair_sums, summarize

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_LEVEL = 0.9


def read_truth(truth: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The true label table; the current format lists only defect rows, so it needs the image folder."""
    truth = Path(truth)
    if images_dir is None:
        header = read_csv_file(truth, nrows=0).columns  # unreadable or missing: one DataError line
        if detect_format(header, truth) == "current":
            raise DataError(
                f"{truth}: the current format lists only images with a defect; "
                "pass --images DIR so that defect-free images are scored too"
            )
    return read_labels(truth, images_dir)


def scored_truth(
    truth: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    folds: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, str]:
    """The truth of the images scored, and what they are (for error lines): every image of the truth,
    or with ``folds`` only those of its local test split, each of which must be in the truth."""
    table = read_truth(truth, images_dir)
    universe = f"the image folder {images_dir}" if images_dir is not None else f"the truth {truth}"
    if folds is None:
        return table, universe
    ids = local_test_ids(folds)
    missing = sorted(set(ids) - set(table["ImageId"]))
    if missing:
        raise DataError(f"{folds}: image {missing[0]} of the local test split is not in {universe}")
    table = table[table["ImageId"].isin(ids)].reset_index(drop=True)
    return table, f"the local test split of {folds}"


def submission_dice(
    submission: str | os.PathLike, truth: pd.DataFrame, universe: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pair_dice`` of a submission file over the truth's images; a missing (image, class) row counts
    as empty, a row for another image is an error."""
    predicted = rows_to_table(read_label_rows(submission), truth["ImageId"], str(submission), universe)
    return pair_dice(predicted, truth)


def score_submission(
    submission: str | os.PathLike,
    truth: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    folds: str | os.PathLike | None = None,
) -> ScoreSummary:
    """Competition score of a submission file (``scored_truth`` says over which images)."""
    table, universe = scored_truth(truth, images_dir, folds)
    return summarize(pair_sums(*submission_dice(submission, table, universe)))


def bootstrap_interval(
    differences: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean of per-image score differences, images drawn with replacement.

    Pairing by image removes what both submissions share (how hard each image is), so the interval is
    that of the difference itself, much narrower than either score's own."""
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 1000):  # in chunks: a (resamples, images) index array may be large
        draws = rng.integers(0, differences.size, (min(1000, resamples - start), differences.size))
        means.append(differences[draws].mean(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    """A submission's score against a baseline's on the same images, with the bootstrap interval."""

    baseline: str
    score: float
    baseline_score: float
    difference: float
    low: float
    high: float
    level: float
    n_images: int
    resamples: int

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        return (
            f"against {self.baseline}: {self.baseline_score:.5f} -> {self.score:.5f}, difference "
            f"{self.difference:+.5f}, {self.level:.0%} interval [{self.low:+.5f}, {self.high:+.5f}] "
            f"(paired bootstrap over {self.n_images} images, {self.resamples} resamples)"
        )


def compare_submissions(
    submission: str | os.PathLike,
    baseline: str | os.PathLike,
    truth: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    folds: str | os.PathLike | None = None,
) -> tuple[ScoreSummary, PairedDifference]:
    """The submission's score and its paired difference from the baseline's on the same images."""
    table, universe = scored_truth(truth, images_dir, folds)
    scored = submission_dice(submission, table, universe)
    baseline_dice = submission_dice(baseline, table, universe)[0]
    summary = summarize(pair_sums(*scored))
    per_image = scored[0].mean(axis=1) - baseline_dice.mean(axis=1)
    low, high = bootstrap_interval(per_image)
    return summary, PairedDifference(
        baseline=str(baseline),
        score=summary.score,
        baseline_score=float(baseline_dice.mean()),
        difference=float(per_image.mean()),
        low=low,
        high=high,
        level=BOOTSTRAP_LEVEL,
        n_images=len(table),
        resamples=BOOTSTRAP_RESAMPLES,
    )
