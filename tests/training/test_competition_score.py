"""The per-epoch validation score: the competition metric accumulated as torchmetrics sums."""

import warnings

import numpy as np
import pytest
import torch

from common_blocks.evaluation.metric import pair_sums, summarize
from common_blocks.training.competition_score import CompetitionScore
from tests.references import mask_dice


def test_masks_in_two_batches_score_as_the_metric_on_all_images():
    rng = np.random.default_rng(0)
    probs = rng.random((6, 4, 16, 24)).astype(np.float32) ** 3
    probs[::2] *= 0.6  # about 23 pixels above 0.5 per map: some of these masks fall under min_area 25
    truth = (rng.random((6, 4, 16, 24)) < 0.2).astype(np.uint8)
    truth[:2, 1] = 0  # empty truths, for the empty-pair conventions
    metric = CompetitionScore()
    for part in (slice(0, 4), slice(4, 6)):
        metric.update(torch.from_numpy(probs[part]), torch.from_numpy(truth[part]), 0.5, min_area=25)
    pred = probs > 0.5
    dropped = pred.sum(axis=(-2, -1)) < 25
    pred[dropped] = False
    expected = summarize(
        pair_sums(mask_dice(pred, truth), dropped | ~pred.any(axis=(-2, -1)), truth.sum(axis=(-2, -1)) == 0)
    )
    summary = metric.summary()
    assert summary.score == pytest.approx(expected.score, abs=1e-7)  # torch sums float32 Dice values
    assert summary.per_class == pytest.approx(expected.per_class, abs=1e-7)
    assert summary.positive_dice == pytest.approx(expected.positive_dice, abs=1e-7)
    assert (summary.false_positive_pairs, summary.false_negative_pairs, summary.n_images) == (
        expected.false_positive_pairs,
        expected.false_negative_pairs,
        6,
    )
    assert dropped.any() and not dropped.all()


def test_gate_probabilities_score_the_pairs_they_get_right_and_count_as_updates():
    metric = CompetitionScore()
    gate = torch.tensor([[0.9, 0.1, 0.6, 0.2], [0.2, 0.1, 0.4, 0.8]])
    presence = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics warns when compute() comes before any update()
        metric.update(gate, presence, 0.5)
        summary = metric.summary()
    assert summary.per_class == {"1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0}
    assert (summary.false_positive_pairs, summary.false_negative_pairs) == (1, 1)
