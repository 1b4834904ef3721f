"""Class-balanced epochs: equal draws from "no defect" and from each defect class, shardable over DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from common_blocks.formats import CLASS_IDS


def presence_groups(presence: np.ndarray) -> list[np.ndarray]:
    """Indices of the 5 groups: no defect, then has class 1 .. 4 (an image can be in several)."""
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2 or presence.shape[1] != len(CLASS_IDS):
        raise ValueError(f"presence must be an (N, {len(CLASS_IDS)}) array, got shape {presence.shape}")
    no_defect = np.flatnonzero(~presence.any(axis=1))
    return [no_defect, *(np.flatnonzero(column) for column in presence.T)]


class BalancedSampler(Sampler[int]):
    """Each epoch draws ``num_samples`` indices, an equal share from every non-empty group.

    Severstal is dominated by defect-free images and class 3; equal shares let the rare classes
    (class 2 above all) weigh in every epoch. A group larger than its share gives a random subset
    without repeats; a smaller one is upsampled: it is repeated as whole shuffled copies plus a
    random remainder, so every member appears equally often (up to one) rather than leaving some
    out by chance as independent draws with replacement would. An empty group is skipped and its
    share goes to the others. The epoch is shuffled and depends only on ``seed + epoch``:
    Lightning calls ``set_epoch`` at every epoch, a hand-written loop must call it itself.

    Under DistributedDataParallel every rank builds the same epoch, pads it to a multiple of
    ``num_replicas`` by repeating its first indices and takes the slice ``rank::num_replicas``;
    ``len()`` is the per-rank count. A Lightning ``Trainer`` must be built with
    ``use_distributed_sampler=False``, otherwise it wraps this sampler in its own
    DistributedSampler and the balancing is lost.
    """

    def __init__(
        self,
        presence: np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.groups = [group for group in presence_groups(presence) if group.size]
        if not self.groups:
            raise ValueError("BalancedSampler needs at least one image")
        self.num_samples = len(presence) if num_samples is None else num_samples
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to draw; all ranks must use the same epoch to get disjoint shards."""
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """The whole epoch of all ranks, padded to a multiple of ``num_replicas``."""
        rng = np.random.default_rng(self.seed + self.epoch)
        shares = np.full(len(self.groups), self.num_samples // len(self.groups))
        shares[rng.permutation(len(self.groups))[: self.num_samples % len(self.groups)]] += 1
        drawn = [self._draw(group, share, rng) for group, share in zip(self.groups, shares, strict=True)]
        epoch = rng.permutation(np.concatenate(drawn))
        return np.resize(epoch, len(self) * self.num_replicas)

    @staticmethod
    def _draw(group: np.ndarray, share: int, rng: np.random.Generator) -> np.ndarray:
        copies, remainder = divmod(share, group.size)
        whole = [rng.permutation(group) for _ in range(copies)]
        return np.concatenate([*whole, rng.choice(group, size=remainder, replace=False)])

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)
