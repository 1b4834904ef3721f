"""The competition score as a torchmetrics Metric: sum states, so DDP ranks add up exactly.

Averaging per-batch or per-rank scores would weight images unequally; summing per-class Dice and
pair counts and dividing once, after the ranks are reduced, gives the score of the whole fold.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from common_blocks.evaluation.metric import PairSums, ScoreSummary, summarize

_STATES = ("dice", "pairs", "positive_dice", "positives", "false_positives", "false_negatives")


def _count(mask: torch.Tensor) -> torch.Tensor:
    """(B, C) pixel counts of a boolean (B, C, H, W) mask, summed as bytes into int32: twice as fast
    on a CPU as summing the booleans (into int64); a 256x1600 mask's count fits many times over."""
    return mask.view(torch.uint8).sum((-2, -1), dtype=torch.int32)


class CompetitionScore(Metric):
    """Accumulates per-class sums of (image, class) pair Dice; ``compute`` gives a ScoreSummary."""

    full_state_update = False

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        for name in _STATES:
            self.add_state(name, default=torch.zeros(n_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, truth: torch.Tensor, threshold: float, min_area: int = 0) -> None:
        """Add a batch: segmentation probabilities (B, 4, H, W) against masks, thresholded, a predicted
        mask under ``min_area`` pixels dropped; or a classifier gate's (B, 4) probabilities against
        class presence, scored as its pairs would be with perfect masks.

        One entry point for both, so that torchmetrics counts every update.
        """
        if probs.ndim == 2:
            pred_empty = probs < threshold
            truth_empty = truth < 0.5
            self._add_pairs((pred_empty == truth_empty).double(), pred_empty, truth_empty)
            return
        pred = probs > threshold
        truth = truth > 0.5 if truth.is_floating_point() else truth != 0  # a uint8 mask: no float copy
        pred_area = _count(pred)
        pred_empty = pred_area < max(min_area, 1)
        pred_area = torch.where(pred_empty, 0, pred_area)
        truth_area = _count(truth)
        intersection = torch.where(pred_empty, 0, _count(pred & truth))
        total = pred_area + truth_area
        dice = torch.where(total == 0, 1.0, 2.0 * intersection / total.clamp(min=1))
        self._add_pairs(dice, pred_empty, truth_area == 0)

    def _add_pairs(self, dice: torch.Tensor, pred_empty: torch.Tensor, truth_empty: torch.Tensor) -> None:
        """Add (B, 4) pair Dice values with the emptiness of prediction and truth."""
        positive = ~truth_empty
        self.dice += dice.double().sum(0)
        self.pairs += dice.shape[0]
        self.positive_dice += torch.where(positive, dice.double(), 0.0).sum(0)
        self.positives += positive.sum(0)
        self.false_positives += (~pred_empty & truth_empty).sum(0)
        self.false_negatives += (pred_empty & positive).sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _STATES}

    def summary(self) -> ScoreSummary:
        """The reported figures of everything accumulated (reduced over DDP ranks by ``compute``)."""
        as_numpy = {name: value.cpu().numpy() for name, value in self.compute().items()}
        for name in ("pairs", "positives", "false_positives", "false_negatives"):
            as_numpy[name] = as_numpy[name].round().astype("int64")
        return summarize(PairSums(**as_numpy))
