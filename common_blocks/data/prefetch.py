"""Decoding the next batches in a thread while the network runs on the current one.

On a CPU, inference decodes in its own process (a loader process would take a core from the
network's threads), so without this the JPEG decoding and normalisation of every batch waits for
the network and the network for them. A thread can overlap them because OpenCV's decoder, file
reads and numpy's loops release the GIL. The batch is built with numpy only (``to_tensor``,
``collate_in_numpy``): a torch operation in the thread would start an OpenMP team of its own and
take the network's cores.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import numpy as np
import torch

_END = object()


def collate_in_numpy(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``'s batch of dict items: tensors stacked (by numpy, see the module), ints as a
    tensor, anything else as a list."""
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.from_numpy(np.stack([value.numpy() for value in values]))
        elif isinstance(first, int):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class Prefetched:
    """Iterates ``batches`` in a background thread, up to ``depth`` batches ahead of the consumer.

    An exception raised while producing a batch is raised to the consumer at that batch. When the
    consumer stops early (an error, Ctrl-C, ``break``), the thread stops at its next batch and is
    joined, so nothing keeps reading files after the caller has moved on.
    """

    def __init__(self, batches: Iterable, depth: int = 2) -> None:
        self.batches = batches
        self.depth = depth

    def __len__(self) -> int:
        if not isinstance(self.batches, Sized):
            raise TypeError(f"{type(self.batches).__name__} has no length")
        return len(self.batches)

    def __iter__(self) -> Iterator:
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def hand_over(value: object) -> bool:
            while not stop.is_set():
                try:
                    ready.put(value, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in self.batches:
                    if not hand_over(batch):
                        return
                hand_over(_END)
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
                hand_over(error)

        thread = threading.Thread(target=produce, name="prefetch", daemon=True)
        thread.start()
        try:
            while True:
                value = ready.get()
                if value is _END:
                    return
                if isinstance(value, BaseException):
                    raise value
                yield value
        finally:
            stop.set()
            thread.join()
