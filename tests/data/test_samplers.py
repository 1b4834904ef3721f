from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from common_blocks.data.samplers import BalancedSampler, RareClassSampler, presence_groups


def skewed_presence(counts: dict[int, int]) -> np.ndarray:
    """Images with exactly one class each (0 = no defect), ``counts[c]`` images of class c."""
    rows = []
    for group, count in counts.items():
        row = np.zeros(4, dtype=bool)
        if group:
            row[group - 1] = True
        rows += [row] * count
    return np.array(rows)


SKEWED = skewed_presence({0: 700, 1: 10, 2: 5, 3: 250, 4: 35})


def group_shares(presence: np.ndarray, indices: list[int]) -> list[float]:
    drawn = np.zeros(len(presence), dtype=int)
    np.add.at(drawn, indices, 1)
    return [drawn[group].sum() / len(indices) for group in presence_groups(presence)]


def test_groups_are_drawn_evenly_from_a_skewed_set() -> None:
    sampler = BalancedSampler(SKEWED)
    indices = list(sampler)
    assert len(indices) == len(sampler) == len(SKEWED)
    np.testing.assert_allclose(group_shares(SKEWED, indices), 0.2, atol=0.01)


def test_rare_groups_are_upsampled_evenly() -> None:
    counts = Counter(BalancedSampler(SKEWED, num_samples=1000))
    class_2 = np.flatnonzero(SKEWED[:, 1])
    assert sorted(counts[i] for i in class_2) == [40] * 5
    class_3 = np.flatnonzero(SKEWED[:, 2])
    assert max(counts[i] for i in class_3) == 1  # a large group is subsampled without repeats


def test_image_with_two_classes_belongs_to_both_groups() -> None:
    presence = np.array([[True, False, True, False], [False, False, False, False]])
    assert [group.tolist() for group in presence_groups(presence)] == [[1], [0], [], [0], []]


def test_empty_groups_give_their_share_to_the_others() -> None:
    presence = skewed_presence({0: 300, 1: 20, 3: 100})
    indices = list(BalancedSampler(presence, num_samples=900))
    shares = group_shares(presence, indices)
    np.testing.assert_allclose([shares[0], shares[1], shares[3]], 1 / 3, atol=0.01)
    assert shares[2] == shares[4] == 0


def test_same_epoch_same_draw_new_epoch_new_draw() -> None:
    first, second = BalancedSampler(SKEWED, seed=3), BalancedSampler(SKEWED, seed=3)
    assert list(first) == list(second)
    epoch_0 = list(first)
    first.set_epoch(1)
    second.set_epoch(1)
    assert list(first) != epoch_0
    assert list(first) == list(second)


def test_ddp_shards_are_disjoint_and_cover_the_epoch() -> None:
    ranks = [BalancedSampler(SKEWED, num_samples=1001, num_replicas=2, rank=rank) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(5)
    shards = [list(sampler) for sampler in ranks]
    epoch = ranks[0].epoch_indices()
    assert [len(shard) for shard in shards] == [len(ranks[0]), len(ranks[1])] == [501, 501]
    assert len(epoch) == 1002
    # the shards take alternate positions of one shared epoch
    assert shards[0] == epoch[0::2].tolist()
    assert shards[1] == epoch[1::2].tolist()
    assert Counter(shards[0]) + Counter(shards[1]) == Counter(epoch.tolist())


def test_ddp_shards_share_no_image_without_upsampling() -> None:
    presence = skewed_presence({0: 100, 1: 100, 2: 100, 3: 100, 4: 100})
    shards = [set(BalancedSampler(presence, num_samples=200, num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == 200


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        BalancedSampler(SKEWED, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        BalancedSampler(np.zeros((5, 3), dtype=bool))
    with pytest.raises(ValueError, match="at least one image"):
        BalancedSampler(np.zeros((0, 4), dtype=bool))
    with pytest.raises(ValueError, match="num_samples"):
        BalancedSampler(SKEWED, num_samples=0)


def test_width_batches_keep_the_samplers_order_and_give_each_batch_one_width():
    from common_blocks.data.samplers import WidthBatchSampler

    inner = list(range(23))
    batches = WidthBatchSampler(inner, 4, (256, 416, 608), seed=3)
    epoch = list(batches)
    assert len(epoch) == len(batches) == 5  # the short last batch is dropped, as drop_last does
    assert [index for batch in epoch for index, _ in batch] == inner[:20]
    assert all(len({width for _, width in batch}) == 1 for batch in epoch)
    widths = [batch[0][1] for _ in range(10) for batch in batches]
    assert set(widths) == {256, 416, 608}  # every width is drawn, epoch after epoch
    again = WidthBatchSampler(inner, 4, (256, 416, 608), seed=3)
    assert list(again) == epoch  # the draws follow the seed


def test_the_rare_class_sampler_draws_images_of_those_classes_factor_times_as_often():
    sampler = RareClassSampler(SKEWED, classes=(1, 2), factor=3.0, num_samples=200_000, seed=0)
    drawn = np.bincount(list(sampler), minlength=len(SKEWED))
    rare = SKEWED[:, :2].any(axis=1)
    ratio = drawn[rare].mean() / drawn[~rare].mean()
    assert ratio == pytest.approx(3.0, rel=0.05)
    assert list(sampler) == list(sampler)  # one epoch is one draw
    sampler.set_epoch(1)
    other = list(sampler)
    assert other != list(RareClassSampler(SKEWED, (1, 2), 3.0, 200_000, seed=0))
    shards = [list(RareClassSampler(SKEWED, (1, 2), 3.0, 11, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6


@pytest.mark.parametrize("factor", [1000.0, 1e308])
def test_the_rare_class_sampler_weights_do_not_overflow(factor):
    """Every image rare: weights of 1e308 each summed to infinity, and numpy refused the draw."""
    every_class = RareClassSampler(SKEWED, classes=(1, 2, 3, 4), factor=factor, num_samples=10, seed=0)
    assert every_class.probabilities.sum() == pytest.approx(1.0)
    assert len(list(every_class)) == 10
    assert RareClassSampler(SKEWED, (1, 2), factor).probabilities.sum() == pytest.approx(1.0)


def test_the_largest_rare_factor_the_config_takes_draws_a_whole_epoch():
    from common_blocks.training.config import MAX_RARE_FACTOR, load_config
    from tests.repository import DEBUG

    cfg = load_config(DEBUG, ["data.sampler=rare", "data.rare_classes=[1, 2, 3, 4]", "data.rare_factor=1000"])
    assert cfg.data.rare_factor == MAX_RARE_FACTOR == 1000
    sampler = RareClassSampler(SKEWED, cfg.data.rare_classes, cfg.data.rare_factor, seed=0)
    assert sampler.probabilities.sum() == pytest.approx(1.0) and len(list(sampler)) == len(SKEWED)
