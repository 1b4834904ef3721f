"""The prefetching thread of inference's loader: order, errors, early stops, numpy-only batches."""

import threading

import pytest
import torch
from torch.utils.data import default_collate

from common_blocks.data.prefetch import Prefetched, collate_in_numpy


def test_batches_come_in_order_and_the_length_is_the_loaders():
    batches = Prefetched(list(range(10)), depth=2)
    assert len(batches) == 10
    assert list(batches) == list(range(10))
    assert list(batches) == list(range(10))  # each iteration starts its own thread


def test_an_error_while_producing_reaches_the_consumer_at_its_batch():
    def produce():
        yield 1
        yield 2
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for batch in Prefetched(produce()):
            seen.append(batch)
    assert seen == [1, 2]


def test_a_consumer_that_stops_early_stops_and_joins_the_thread():
    produced = []

    def produce():
        for i in range(1000):
            produced.append(i)
            yield i

    before = threading.active_count()
    for batch in Prefetched(produce(), depth=2):
        if batch == 3:
            break
    assert threading.active_count() == before  # joined, not left reading
    assert len(produced) <= 3 + 1 + 2 + 1  # at most the depth ahead, plus the one being handed over


def test_a_generator_without_length_says_so():
    with pytest.raises(TypeError, match="has no length"):
        len(Prefetched(iter([])))


def test_numpy_collation_gives_default_collates_batch():
    items = [
        {
            "image": torch.randn(1, 4, 6),
            "mask": torch.randint(0, 2, (4, 4, 6), dtype=torch.uint8),
            "image_id": f"{i}.jpg",
            "index": i,
            "error": "",
        }
        for i in range(3)
    ]
    ours, torchs = collate_in_numpy(items), default_collate(items)
    assert ours.keys() == torchs.keys()
    for key, value in torchs.items():
        if isinstance(value, torch.Tensor):
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value)
        else:
            assert ours[key] == value
