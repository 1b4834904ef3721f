"""The competition metric: mean Dice over every (image, class) pair.

Dice of a pair is 2|P∩T| / (|P|+|T|), 1 when prediction and truth are both empty and 0 when exactly
one is empty. Scoring works on the run-length encodings directly (intersecting runs), so the full
competition scale never decodes a mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np
import pandas as pd

from common_blocks.data.formats import CLASS_IDS, N_CLASSES, RLE_COLUMNS


@dataclass(frozen=True)
class PairSums:
    """Per-class sums from which every reported figure follows; they add up across batches and ranks."""

    dice: np.ndarray  # (4,) sum of Dice over pairs
    pairs: np.ndarray  # (4,) number of pairs
    positive_dice: np.ndarray  # (4,) sum of Dice over pairs with a true defect
    positives: np.ndarray  # (4,) number of pairs with a true defect
    false_positives: np.ndarray  # (4,) predicted defect, truth empty
    false_negatives: np.ndarray  # (4,) truth has a defect, prediction empty

    def __add__(self, other: PairSums) -> PairSums:
        return PairSums(*(getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__))


@dataclass(frozen=True)
class ScoreSummary:
    """What a competitor reads off a score: overall, per class, and where the errors are."""

    score: float
    per_class: dict[str, float]
    positive_dice: float
    false_positive_pairs: int
    false_negative_pairs: int
    n_images: int

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        per_class = "  ".join(f"class {c}: {v:.4f}" for c, v in self.per_class.items())
        return (
            f"score {self.score:.5f} over {self.n_images} images\n{per_class}\n"
            f"positive-pair dice {self.positive_dice:.4f}  false-positive pairs {self.false_positive_pairs}  "
            f"false-negative pairs {self.false_negative_pairs}"
        )


def pair_sums(dice: np.ndarray, pred_empty: np.ndarray, truth_empty: np.ndarray) -> PairSums:
    """Sums over the images of (N, 4) arrays of pair Dice and emptiness."""
    positive = ~truth_empty
    return PairSums(
        dice=dice.sum(axis=0, dtype=np.float64),
        pairs=np.full(dice.shape[1], dice.shape[0], dtype=np.int64),
        positive_dice=np.where(positive, dice, 0.0).sum(axis=0),
        positives=positive.sum(axis=0).astype(np.int64),
        false_positives=(~pred_empty & truth_empty).sum(axis=0).astype(np.int64),
        false_negatives=(pred_empty & positive).sum(axis=0).astype(np.int64),
    )


def summarize(sums: PairSums) -> ScoreSummary:
    """Turn accumulated sums into the reported figures."""
    n_images = int(sums.pairs[0])
    if n_images == 0:
        raise ValueError("no images were scored")
    per_class = sums.dice / sums.pairs
    n_positive = int(sums.positives.sum())
    return ScoreSummary(
        score=float(sums.dice.sum() / sums.pairs.sum()),
        per_class={str(c): float(v) for c, v in zip(CLASS_IDS, per_class, strict=True)},
        positive_dice=float(sums.positive_dice.sum() / n_positive) if n_positive else float("nan"),
        false_positive_pairs=int(sums.false_positives.sum()),
        false_negative_pairs=int(sums.false_negatives.sum()),
        n_images=n_images,
    )


def dice_from_areas(intersection: np.ndarray, pred_area: np.ndarray, truth_area: np.ndarray) -> np.ndarray:
    """Pair Dice from pixel counts, with the competition's empty-pair conventions."""
    total = pred_area + truth_area
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1))


@numba.njit(cache=True, nogil=True)
def _run_intersection(a_starts, a_lengths, b_starts, b_lengths) -> int:
    i = 0
    j = 0
    total = 0
    while i < a_starts.size and j < b_starts.size:
        a_end = a_starts[i] + a_lengths[i]
        b_end = b_starts[j] + b_lengths[j]
        overlap = min(a_end, b_end) - max(a_starts[i], b_starts[j])
        if overlap > 0:
            total += overlap
        if a_end <= b_end:
            i += 1
        else:
            j += 1
    return total


def _runs(encoded: str) -> np.ndarray:
    return np.asarray(encoded.split(), dtype=np.int64).reshape(-1, 2)


def rle_dice(pred: str, truth: str) -> float:
    """Dice of two RLE strings (valid, sorted runs), computed on the runs."""
    if not pred or not truth:
        return 1.0 if not pred and not truth else 0.0
    p, t = _runs(pred), _runs(truth)
    intersection = _run_intersection(p[:, 0], p[:, 1], t[:, 0], t[:, 1])
    return 2.0 * intersection / (p[:, 1].sum() + t[:, 1].sum())


def pair_dice(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 4) Dice of every pair of the truth's images, and whether prediction and truth are empty;
    images missing from ``pred`` are empty."""
    pred = pred.set_index("ImageId").reindex(truth["ImageId"]).fillna("")
    dice = np.empty((len(truth), N_CLASSES))
    for k, column in enumerate(RLE_COLUMNS):
        dice[:, k] = [
            rle_dice(p, t) for p, t in zip(pred[column].to_numpy(), truth[column].to_numpy(), strict=True)
        ]
    pred_empty = np.stack([pred[c].to_numpy() == "" for c in RLE_COLUMNS], axis=1)
    truth_empty = np.stack([truth[c].to_numpy() == "" for c in RLE_COLUMNS], axis=1)
    return dice, pred_empty, truth_empty


def score_tables(pred: pd.DataFrame, truth: pd.DataFrame) -> PairSums:
    """Score a predicted label table against a true one; images missing from ``pred`` are empty."""
    return pair_sums(*pair_dice(pred, truth))
