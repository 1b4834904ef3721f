"""The LightningDataModule: labels, folds, datasets and samplers of one fold, and pseudo-labels to train with."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from common_blocks.data.datasets import ClassificationDataset, SegmentationDataset
from common_blocks.data.formats import class_presence, read_pseudo_labels
from common_blocks.data.samplers import (
    BalancedSampler,
    MixedSampler,
    RareClassSampler,
    ShardSampler,
    WidthBatchSampler,
)
from common_blocks.data.transforms import build_train_transform
from common_blocks.errors import DataError
from common_blocks.training.config import PseudoConfig, TrainConfig
from common_blocks.training.folds_file import check_fold, labelled_folds, write_missing_folds


def load_pseudo_table(cfg: PseudoConfig, images_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The pseudo-labels to train with; None when not configured, when ``fraction`` is 0, or (with a
    warning) when the file lists no image, e.g. after a round that kept nothing."""
    if cfg.labels is None or cfg.fraction == 0:
        return None
    table = read_pseudo_labels(cfg.labels, images_dir)
    if table.empty:
        warnings.warn(f"{cfg.labels}: no pseudo-labelled image; training on real images only", stacklevel=2)
        return None
    return table


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SteelDataModule(L.LightningDataModule):
    """One fold's data: ``prepare_data`` writes a missing folds file (Lightning calls it on one
    process per node), ``setup`` reads labels and folds on every rank and splits off the fold."""

    def __init__(self, cfg: TrainConfig, fold: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.fold = fold
        self.train_table: pd.DataFrame | None = None
        self.valid_table: pd.DataFrame | None = None
        self.pseudo_table: pd.DataFrame | None = None

    def prepare_data(self) -> None:
        write_missing_folds(self.cfg)

    def setup(self, stage: str) -> None:
        if self.valid_table is None:
            table = labelled_folds(self.cfg)
            check_fold(table, self.fold)
            self.train_table = table[table["fold"] != self.fold].reset_index(drop=True)
            self.valid_table = table[table["fold"] == self.fold].reset_index(drop=True)
            if self.train_table.empty or self.valid_table.empty:
                raise DataError(f"fold {self.fold} leaves no training or no validation images")
        # Pseudo-labelled test images go into training batches only, never into validation; read at
        # fit time, so evaluating a checkpoint later does not need the file.
        if stage == "fit":
            self.pseudo_table = load_pseudo_table(self.cfg.pseudo, self.test_images_dir)

    @property
    def dataset_class(self) -> type[SegmentationDataset]:
        return ClassificationDataset if self.cfg.task == "classification" else SegmentationDataset

    @property
    def images_dir(self) -> Path:
        return Path(self.cfg.data.data_dir) / "train_images"

    @property
    def test_images_dir(self) -> Path:
        return Path(self.cfg.data.data_dir) / "test_images"

    @property
    def on_gpu(self) -> bool:
        """Whether the batches go to a CUDA device: the attached Trainer's device when there is one
        (Lightning attaches it before asking for loaders), else what ``trainer.accelerator`` resolves
        to (``auto``: a GPU when one is visible, as ``runner.resolve_devices`` decides)."""
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        accelerator = self.cfg.trainer.accelerator
        return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())

    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: Sampler,
        drop_last: bool,
        widths: tuple[int, ...] | None = None,
    ) -> DataLoader:
        """Workers stay alive across epochs (no re-fork and re-import per epoch); for a GPU the
        batches are collated into pinned (page-locked) memory, so Lightning's copy to the device is
        asynchronous (non-blocking) and needs no staging copy. ``widths``: one crop width per batch."""
        workers = self.cfg.data.num_workers
        batching = (
            {"batch_sampler": WidthBatchSampler(sampler, batch_size, widths, self.cfg.trainer.seed)}
            if widths
            else {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}
        )
        return DataLoader(
            dataset, num_workers=workers, persistent_workers=workers > 0, pin_memory=self.on_gpu, **batching
        )

    def train_sampler(self) -> Sampler[int]:
        rank, world = _rank_and_world()
        data = self.cfg.data
        n_samples = data.samples_per_epoch or len(self.train_table)
        if data.sampler == "balanced":
            presence = class_presence(self.train_table)
            return BalancedSampler(presence, n_samples, self.cfg.trainer.seed, num_replicas=world, rank=rank)
        if data.sampler == "rare":
            presence = class_presence(self.train_table)
            return RareClassSampler(
                presence, data.rare_classes, data.rare_factor, n_samples, self.cfg.trainer.seed, world, rank
            )
        if world > 1:
            return DistributedSampler(range(len(self.train_table)), world, rank, seed=self.cfg.trainer.seed)
        return RandomSampler(range(len(self.train_table)), num_samples=n_samples)

    def _train_dataset(self, table: pd.DataFrame, images_dir: Path) -> SegmentationDataset:
        augment = self.cfg.augment
        if augment.crop_widths:
            transform = {
                width: build_train_transform(augment, crop_width=width) for width in augment.crop_widths
            }
        else:
            transform = build_train_transform(augment)
        data = self.cfg.data
        return self.dataset_class(
            table,
            images_dir,
            transform=transform,
            grayscale=data.grayscale,
            mask_scale=data.scale,  # the loss's targets at the network's resolution, made in the loader
            cache_images=data.cache_images,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._train_dataset(self.train_table, self.images_dir)
        batch = min(self.cfg.data.batch_size, len(self.train_table))
        widths = self.cfg.augment.crop_widths
        if self.pseudo_table is None:
            return self._loader(dataset, batch, self.train_sampler(), drop_last=True, widths=widths)
        pseudo = self._train_dataset(self.pseudo_table, self.test_images_dir)
        rank, world = _rank_and_world()
        sampler = MixedSampler(
            self.train_sampler(),
            len(dataset),
            len(pseudo),
            batch,
            self.cfg.pseudo.fraction,
            self.cfg.trainer.seed,
            num_replicas=world,
            rank=rank,
        )
        return self._loader(ConcatDataset([dataset, pseudo]), batch, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        dataset = self.dataset_class(
            self.valid_table,
            self.images_dir,
            transform=None,  # validation sees full, unaugmented images, as inference does
            grayscale=self.cfg.data.grayscale,
            cache_images=self.cfg.data.cache_images,
        )
        rank, world = _rank_and_world()
        return self._loader(
            dataset, self.cfg.data.valid_batch_size, ShardSampler(len(dataset), rank, world), False
        )
