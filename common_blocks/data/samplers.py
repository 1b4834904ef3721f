"""Class-balanced epochs: equal draws from "no defect" and from each defect class, shardable over DDP ranks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from common_blocks.data.formats import N_CLASSES


def presence_groups(presence: np.ndarray) -> list[np.ndarray]:
    """Indices of the 5 groups: no defect, then has class 1 .. 4 (an image can be in several)."""
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2 or presence.shape[1] != N_CLASSES:
        raise ValueError(f"presence must be an (N, {N_CLASSES}) array, got shape {presence.shape}")
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


class RareClassSampler(Sampler[int]):
    """Each epoch draws ``num_samples`` indices with replacement, an image that holds any of
    ``classes`` (1-based) ``factor`` times as likely as another: the rare classes are seen more often
    while the class mix of the rest stays as it is (unlike ``BalancedSampler``'s equal shares, which
    repeat a small defect-free group many times). Drawn from ``seed + epoch``; under DDP every rank
    draws the same epoch and takes its slice, as ``BalancedSampler`` does."""

    def __init__(
        self,
        presence: np.ndarray,
        classes: tuple[int, ...],
        factor: float,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        rare = presence[:, [c - 1 for c in classes]].any(axis=1)
        weights = np.where(rare, factor, 1.0)
        weights /= weights.max()  # the largest weight 1: a sum of one per image never overflows
        self.probabilities = weights / weights.sum()
        self.num_samples = len(presence) if num_samples is None else num_samples
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        epoch = rng.choice(len(self.probabilities), size=len(self) * self.num_replicas, p=self.probabilities)
        return iter(epoch[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)


class ShardSampler(Sampler[int]):
    """Rank ``rank`` of ``world`` takes indices rank, rank+world, ...: every item exactly once overall.

    Unlike DistributedSampler it never pads with repeats, so validation scores and out-of-fold
    exports cover each image once however the ranks divide them.
    """

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def pseudo_counts(n_real: int, batch_size: int, fraction: float) -> np.ndarray:
    """Pseudo images in each batch of an epoch that uses up to ``n_real`` real images.

    Batch b holds floor((b+1) B f) - floor(b B f) of them, so every batch is within one image of
    ``f B`` and every run of batches within one image of the fraction (B=4, f=0.3: 1,1,1,1,2, ...).
    The epoch has as many batches as the real images fill; all of them go in but a part-batch.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n_max = int(np.ceil(n_real / (batch_size * (1 - fraction)))) + 1
    batches = np.arange(n_max + 1)
    pseudo_before = np.floor(batches * batch_size * fraction + 1e-9).astype(np.int64)
    real_before = batches * batch_size - pseudo_before
    n_batches = int(np.searchsorted(real_before, n_real, side="right")) - 1
    return np.diff(pseudo_before[: n_batches + 1])


class MixedSampler(Sampler[int]):
    """Indices into ``ConcatDataset([real, pseudo])``, batch after batch: ``batch_size - k`` real indices
    from ``real`` (this rank's shard of its epoch), then ``k`` pseudo indices (``pseudo_counts``).

    Pseudo indices come from one stream all ranks build alike from ``seed`` and the epoch, made of
    whole shuffled passes over the pseudo images (each drawn equally often, up to one); rank r takes
    its items r, r + num_replicas, ..., so the ranks' shards are disjoint. A flat sampler rather than
    a batch sampler, to be used with ``batch_size`` and ``drop_last=True``: Lightning calls
    ``set_epoch`` on a DataLoader's ``sampler``, and this one passes it on to ``real``.
    """

    def __init__(
        self,
        real: Sampler[int],
        n_real_images: int,
        n_pseudo_images: int,
        batch_size: int,
        fraction: float,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if n_pseudo_images < 1:
            raise ValueError("MixedSampler needs at least one pseudo-labelled image")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.real = real
        self.offset = n_real_images  # pseudo image i is item offset + i of the ConcatDataset
        self.n_pseudo = n_pseudo_images
        self.batch_size = batch_size
        self.counts = pseudo_counts(len(real), batch_size, fraction)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.real, "set_epoch", None)):
            self.real.set_epoch(epoch)

    def pseudo_indices(self) -> np.ndarray:
        """This rank's pseudo items of the epoch, in order (ConcatDataset indices)."""
        total = int(self.counts.sum()) * self.num_replicas
        passes = -(-total // self.n_pseudo)
        rng = np.random.default_rng([self.seed, self.epoch])
        stream = rng.permuted(np.tile(np.arange(self.n_pseudo), (passes, 1)), axis=1).ravel()[:total]
        return stream[self.rank :: self.num_replicas] + self.offset

    def __iter__(self) -> Iterator[int]:
        real = iter(self.real)
        pseudo = iter(self.pseudo_indices().tolist())
        for count in self.counts.tolist():
            yield from itertools.islice(real, self.batch_size - count)
            yield from itertools.islice(pseudo, count)

    def __len__(self) -> int:
        return len(self.counts) * self.batch_size


class WidthBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``sampler``'s indices, ``batch_size`` at a time (a short last batch dropped), each
    with one crop width drawn uniformly from ``widths``: items ``(index, width)`` for a dataset of
    multi-scale crops. The draws follow ``seed`` and the number of epochs iterated so far.

    ``sampler`` is exposed as ``.sampler``: Lightning calls ``set_epoch`` on a batch sampler's
    ``sampler``, which keeps a balanced or sharded epoch as without multi-scale crops.
    """

    def __init__(
        self, sampler: Sampler[int], batch_size: int, widths: tuple[int, ...], seed: int = 0
    ) -> None:
        if not widths:
            raise ValueError("WidthBatchSampler needs at least one width")
        self.sampler = sampler
        self.batch_size = batch_size
        self.widths = widths
        self.seed = seed
        self.iterations = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.iterations])
        self.iterations += 1
        indices = iter(self.sampler)
        while batch := list(itertools.islice(indices, self.batch_size)):
            if len(batch) < self.batch_size:
                return
            width = int(self.widths[rng.integers(len(self.widths))])
            yield [(index, width) for index in batch]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size
