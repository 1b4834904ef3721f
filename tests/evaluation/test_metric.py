import numpy as np
import pytest

from common_blocks.data import rle
from common_blocks.data.formats import empty_table
from common_blocks.evaluation.metric import dice_from_areas, rle_dice, score_tables, summarize
from tests.references import mask_dice


def _masks(shape=(8, 10)):
    pred = np.zeros(shape, np.uint8)
    truth = np.zeros(shape, np.uint8)
    pred[0:4, 0:5] = 1  # 20 pixels
    truth[2:6, 0:5] = 1  # 20 pixels, 10 shared
    return pred, truth


def test_hand_computed_dice():
    pred, truth = _masks()
    assert rle_dice(rle.encode(pred), rle.encode(truth)) == pytest.approx(0.5)
    assert rle_dice("", "") == 1.0
    assert rle_dice("1 3", "") == 0.0
    assert rle_dice("", "1 3") == 0.0
    assert dice_from_areas(np.array([0]), np.array([5]), np.array([0])).tolist() == [0.0]


def test_rle_dice_matches_mask_dice_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred = (rng.random((256, 1600)) < rng.random() * 0.02).astype(np.uint8)
        truth = (rng.random((256, 1600)) < rng.random() * 0.02).astype(np.uint8)
        assert rle_dice(rle.encode(pred), rle.encode(truth)) == pytest.approx(float(mask_dice(pred, truth)))


def test_score_summary_hand_computed():
    pred_mask, truth_mask = _masks((256, 1600))
    truth = empty_table(["a.jpg", "b.jpg"])
    pred = empty_table(["a.jpg", "b.jpg"])
    truth.loc[0, "rle_1"] = rle.encode(truth_mask)  # a/1: dice 0.5
    pred.loc[0, "rle_1"] = rle.encode(pred_mask)
    truth.loc[1, "rle_3"] = "1 10"  # b/3: false negative, dice 0
    pred.loc[1, "rle_4"] = "1 10"  # b/4: false positive, dice 0
    summary = summarize(score_tables(pred, truth))
    # 8 pairs: 0.5 + 0 + 0 + five empty-empty pairs scoring 1
    assert summary.score == pytest.approx(5.5 / 8)
    assert summary.per_class == pytest.approx({"1": 0.75, "2": 1.0, "3": 0.5, "4": 0.5})
    assert summary.positive_dice == pytest.approx(0.5 / 2)
    assert summary.false_positive_pairs == 1
    assert summary.false_negative_pairs == 1
    assert summary.n_images == 2


def test_missing_images_in_prediction_count_as_empty():
    truth = empty_table(["a.jpg", "b.jpg"])
    truth.loc[1, "rle_2"] = "5 5"
    summary = summarize(score_tables(empty_table(["a.jpg"]), truth))
    assert summary.score == pytest.approx(7 / 8)
    assert summary.false_negative_pairs == 1


def test_sums_add_up_across_parts():
    truth = empty_table(["a.jpg", "b.jpg", "c.jpg"])
    truth.loc[[0, 2], "rle_3"] = ["1 100", "50 10"]
    pred = empty_table(["a.jpg", "b.jpg", "c.jpg"])
    pred.loc[[0, 1], "rle_3"] = ["1 50", "9 9"]
    whole = summarize(score_tables(pred, truth))
    parts = score_tables(pred.iloc[:1], truth.iloc[:1]) + score_tables(pred.iloc[1:], truth.iloc[1:])
    assert summarize(parts) == whole
