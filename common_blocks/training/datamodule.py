"""The LightningDataModule: labels, folds, datasets and samplers of one fold, and the pseudo-labels and
image-level (weak) labels to train with."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from common_blocks.data.datasets import ClassificationDataset, ImageLabelDataset, SegmentationDataset
from common_blocks.data.formats import (
    IGNORED_COLUMNS,
    PRESENCE_COLUMNS,
    class_presence,
    read_pseudo_labels,
    read_weak_labels,
)
from common_blocks.data.samplers import (
    BalancedSampler,
    MixedSampler,
    RareClassSampler,
    ShardSampler,
    WidthBatchSampler,
)
from common_blocks.data.transforms import build_train_transform
from common_blocks.errors import DataError
from common_blocks.training.config import DataConfig, PseudoConfig, TrainConfig
from common_blocks.training.folds_file import check_fold, labelled_folds, write_missing_folds
from common_blocks.training.losses import check_class_weights
from common_blocks.training.modes import CLASSIFICATION_MODE


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


def ignores_classes(table: pd.DataFrame | None) -> bool:
    """Whether a pseudo-label table leaves any class of any image out of the loss (``Ignored`` rows)."""
    return (
        table is not None
        and IGNORED_COLUMNS[0] in table.columns
        and bool(table[list(IGNORED_COLUMNS)].any(axis=None))
    )


def load_weak_table(cfg: DataConfig, labelled: pd.Series) -> pd.DataFrame | None:
    """The presence table of ``data.weak`` (None when off). An image also among the ``labelled`` ones
    (those with masks, every fold) is an error: it would be trained on while it validates."""
    if cfg.weak is None:
        return None
    images = cfg.in_data_dir(cfg.weak.images)
    table = read_weak_labels(cfg.in_data_dir(cfg.weak.labels), images)
    shared = sorted(set(table["ImageId"]) & set(labelled))
    if shared:
        raise DataError(
            f"data.weak: {images}/{shared[0]} (and {len(shared) - 1} more) is also a labelled training image; "
            "image-level labels must come from images outside train_images, or a validation fold would train on it"
        )
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
        self.weak_table: pd.DataFrame | None = None

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
        # Pseudo-labelled and weakly labelled images go into training batches only, never into
        # validation; read at fit time, so evaluating a checkpoint later does not need the files.
        if stage == "fit":
            self.pseudo_table = load_pseudo_table(self.cfg.pseudo, self.pseudo_images_dir)
            if ignores_classes(self.pseudo_table):
                task_mode = CLASSIFICATION_MODE if self.cfg.task == "classification" else self.cfg.mode
                check_class_weights(self.cfg.loss, task_mode, f"pseudo.labels {self.cfg.pseudo.labels}")
            labelled = pd.concat([self.train_table["ImageId"], self.valid_table["ImageId"]])
            self.weak_table = load_weak_table(self.cfg.data, labelled)

    @property
    def dataset_class(self) -> type[SegmentationDataset]:
        return ClassificationDataset if self.cfg.task == "classification" else SegmentationDataset

    @property
    def images_dir(self) -> Path:
        return Path(self.cfg.data.data_dir) / "train_images"

    @property
    def pseudo_images_dir(self) -> Path:
        return self.cfg.data.in_data_dir(self.cfg.pseudo.images)

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

    def train_presence(self) -> np.ndarray:
        """(N, 4) classes of every training image: the fold's labelled ones, then the weak ones."""
        presence = class_presence(self.train_table)
        if self.weak_table is None:
            return presence
        return np.concatenate([presence, self.weak_table[list(PRESENCE_COLUMNS)].to_numpy(dtype=bool)])

    def train_sampler(self) -> Sampler[int]:
        """Draws over the training images, weak ones included (the samplers balance their classes too)."""
        rank, world = _rank_and_world()
        data = self.cfg.data
        presence = self.train_presence()
        n_samples = data.samples_per_epoch or len(presence)
        if data.sampler == "balanced":
            return BalancedSampler(presence, n_samples, self.cfg.trainer.seed, num_replicas=world, rank=rank)
        if data.sampler == "rare":
            return RareClassSampler(
                presence, data.rare_classes, data.rare_factor, n_samples, self.cfg.trainer.seed, world, rank
            )
        if world > 1:
            return DistributedSampler(range(len(presence)), world, rank, seed=self.cfg.trainer.seed)
        return RandomSampler(range(len(presence)), num_samples=n_samples)

    def _train_dataset(
        self, table: pd.DataFrame, images_dir: Path, dataset_class: type[SegmentationDataset] | None = None
    ) -> SegmentationDataset:
        """``table``'s training dataset (``dataset_class``, by default the task's); each item with its
        ``class_weight`` when the pseudo-labels leave classes out."""
        augment = self.cfg.augment
        if augment.crop_widths:
            transform = {
                width: build_train_transform(augment, crop_width=width) for width in augment.crop_widths
            }
        else:
            transform = build_train_transform(augment)
        data = self.cfg.data
        return (dataset_class or self.dataset_class)(
            table,
            images_dir,
            transform=transform,
            grayscale=data.grayscale,
            mask_scale=data.scale,  # the loss's targets at the network's resolution, made in the loader
            cache_images=data.cache_images,
            class_weights=ignores_classes(self.pseudo_table),
        )

    def train_dataloader(self) -> DataLoader:
        dataset: Dataset = self._train_dataset(self.train_table, self.images_dir)
        if self.weak_table is not None:
            weak = self.cfg.data.in_data_dir(self.cfg.data.weak.images)
            dataset = ConcatDataset([dataset, self._train_dataset(self.weak_table, weak, ImageLabelDataset)])
        batch = min(self.cfg.data.batch_size, len(dataset))
        widths = self.cfg.augment.crop_widths
        if self.pseudo_table is None:
            return self._loader(dataset, batch, self.train_sampler(), drop_last=True, widths=widths)
        pseudo = self._train_dataset(self.pseudo_table, self.pseudo_images_dir)
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
