"""Torch datasets over a label table: images with their 4 defect masks, or with image-level labels.

The label table is the one of ``common_blocks.data.formats``: one row per image, ``ImageId`` and the RLE
columns ``rle_1`` .. ``rle_4`` ('' = no defect of that class).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from common_blocks.data import rle
from common_blocks.data.formats import IGNORED_COLUMNS, PRESENCE_COLUMNS, RLE_COLUMNS
from common_blocks.data.images import read_image
from common_blocks.data.transforms import seed_transform
from common_blocks.errors import DataError

# Pretrained encoders (timm / segmentation_models_pytorch) were trained on ImageNet RGB scaled to
# [0, 1] and normalised with these statistics; feeding them inputs with the same statistics keeps
# their first layers in the regime they were trained for.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A 1-channel encoder built from RGB weights (smp/timm ``in_channels=1``) sums the three input
# filters, i.e. it expects a grey image normalised as each RGB channel would be. The steel images
# are grey replicated over 3 channels, so the channel average of the ImageNet statistics gives the
# grey input the same values the 3-channel input has, up to the small spread between channels.
GREY_MEAN = (float(np.mean(IMAGENET_MEAN)),)
GREY_STD = (float(np.mean(IMAGENET_STD)),)

_NORMALISATION = {
    channels: (
        np.array([1 / (255 * s) for s in std], dtype=np.float32).reshape(-1, 1, 1),
        np.array([m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32).reshape(-1, 1, 1),
    )
    for channels, mean, std in ((3, IMAGENET_MEAN, IMAGENET_STD), (1, GREY_MEAN, GREY_STD))
}


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 (RGB) or HxW / HxWx1 (grey) image -> normalised float32 CxHxW tensor.

    ``(x / 255 - mean) / std``, computed as one multiply-subtract in float32 after moving the
    channels first on the uint8 data (a quarter of the bytes to copy); shared by training and
    inference so both see identical inputs. In numpy, not torch: each of torch's element-wise
    operations here is an OpenMP region over every core, which waits for a descheduled thread when
    another process loads the cores (24 ms per image there, numpy 0.14 ms; on idle cores both about
    0.2 ms). The values are the same bits.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"to_tensor expects a uint8 image, got {image.dtype}")
    channels_first = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    channels = channels_first.shape[0]
    if channels not in _NORMALISATION:
        raise ValueError(f"to_tensor expects 1 or 3 channels, got image shape {image.shape}")
    scale, offset = _NORMALISATION[channels]
    normalised = channels_first.astype(np.float32, order="C")
    normalised *= scale
    normalised -= offset
    return torch.from_numpy(normalised)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """uint8 HxWx4 mask of 0/1 -> uint8 4xHxW tensor.

    uint8, not float: a 256x1600 mask is 1.6 MB instead of 6.6 MB to pass from a loader worker to
    the training process; the module converts it where a loss needs floats.
    """
    return torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))


def _whole_factor(scale: float) -> int:
    """``1 / scale`` when it is a power of two above 1 (the block means are then exact), else 1."""
    factor = round(1 / scale)
    exact = factor > 1 and factor & (factor - 1) == 0 and abs(factor * scale - 1) < 1e-9
    return factor if exact else 1


def area_downsampled(mask: np.ndarray, factor: int) -> np.ndarray | None:
    """An HxWxC 0/1 uint8 mask averaged over ``factor`` x ``factor`` blocks, float32, the values
    ``F.interpolate(mode="area")`` gives (a count of 0/1 values times a power of two's inverse is
    exact); None when ``factor`` is 1 or does not divide both sides.

    Summed as strided slices, rows then columns: 15x faster than a mean over the axes of a 5-d view.
    """
    height, width, _ = mask.shape
    if factor == 1 or height % factor or width % factor:
        return None
    counts = np.uint8 if factor * factor <= np.iinfo(np.uint8).max else np.uint16
    rows = functools.reduce(np.add, (mask[i::factor].astype(counts) for i in range(factor)))
    blocks = functools.reduce(np.add, (rows[:, i::factor] for i in range(factor)))
    return blocks.astype(np.float32) * np.float32(1 / (factor * factor))


class SegmentationDataset(Dataset):
    """Items ``image`` (float32 CxHxW, normalised), ``mask`` (uint8 4xHxW of 0/1, when
    ``with_masks``), ``image_id`` and ``index``.

    ``transform`` is an albumentations pipeline applied to the uint8 image and the HxWx4 mask
    together, so crops and flips move both alike; normalisation comes after it (``to_tensor``).
    Multi-scale crops: ``transform`` maps each crop width to its pipeline, and items are asked for
    as ``(index, width)`` (``samplers.WidthBatchSampler`` draws one width per batch).
    ``with_masks=False`` serves unlabelled images (inference); the table then only needs ``ImageId``.

    Two speed-ups for training, each exact: ``mask_scale`` < 1 (``data.scale``) gives the masks
    area-averaged to the network's resolution as float32 fractions, the target the loss would
    otherwise compute in the training process from the full uint8 mask (when ``1 / mask_scale`` is a
    power of two that divides the augmented size; otherwise the full mask as usual);
    ``cache_images`` keeps each decoded image in memory (per process, read-only) after its first
    read, so later epochs skip the JPEG decoding.

    ``class_weights`` adds ``class_weight``, float32 (4,): 0 for a class the loss leaves out for the
    image (the pseudo-label table's ``ignored_1`` .. ``ignored_4``), 1 for the others and for every
    class of a table without them (real masks).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        images_dir: str | os.PathLike,
        transform: A.Compose | Mapping[int, A.Compose] | None = None,
        grayscale: bool = False,
        with_masks: bool = True,
        mask_scale: float = 1.0,
        cache_images: bool = False,
        class_weights: bool = False,
    ) -> None:
        needed = ["ImageId", *RLE_COLUMNS] if with_masks else ["ImageId"]
        missing = [column for column in needed if column not in table.columns]
        if missing:
            raise DataError(f"label table lacks column(s) {', '.join(missing)}")
        self.images_dir = Path(images_dir)
        self.transform = transform
        self.grayscale = grayscale
        self.with_masks = with_masks
        # Plain lists: indexing a DataFrame per item costs more than decoding its masks.
        self.image_ids: list[str] = table["ImageId"].tolist()
        self.rles: list[tuple[str, ...]] = (
            list(table[list(RLE_COLUMNS)].itertuples(index=False, name=None)) if with_masks else []
        )
        self.mask_factor = _whole_factor(mask_scale)
        self.class_weights: np.ndarray | None = None
        if class_weights:
            ignored = table.reindex(columns=list(IGNORED_COLUMNS), fill_value=False).to_numpy(dtype=bool)
            self.class_weights = (~ignored).astype(np.float32)
        self._images: dict[int, np.ndarray] | None = {} if cache_images else None
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        self._prepare_worker()
        index, width = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index, width)
        item = {"image": to_tensor(image), "image_id": self.image_ids[index], "index": index}
        if mask is not None:
            item.update(self.mask_targets(mask))
        if self.class_weights is not None:
            item["class_weight"] = torch.from_numpy(self.class_weights[index])
        return item

    def load(self, index: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The augmented uint8 image and HxWx4 mask (None without masks), before normalisation;
        ``width`` picks the pipeline of that crop width (multi-scale crops)."""
        image = self.read_image(index)
        mask = self.decode_masks(index, image.shape[:2]) if self.with_masks else None
        transform = self.transform if width is None else self.transform[width]
        if transform is None:
            return image, mask
        if mask is None:
            return transform(image=image)["image"], None
        augmented = transform(image=image, mask=mask)
        return augmented["image"], augmented["mask"]

    def read_image(self, index: int) -> np.ndarray:
        """The decoded uint8 image; with ``cache_images`` from memory after its first read (read-only,
        so a transform that wrote into it would fail instead of changing later epochs)."""
        image = None if self._images is None else self._images.get(index)
        if image is None:
            image = read_image(self.images_dir / self.image_ids[index], grayscale=self.grayscale)
            if self._images is not None:
                image.setflags(write=False)
                self._images[index] = image
        return image

    def decode_masks(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """HxWx4 uint8 mask of 0/1; classes without a defect are not decoded.

        ``cv2.merge`` interleaves the channels ~3x faster than assigning into ``mask[..., c]``.
        """
        empty = np.zeros(shape, dtype=np.uint8)
        return cv2.merge([rle.decode(encoded, shape) if encoded else empty for encoded in self.rles[index]])

    def mask_targets(self, mask: np.ndarray) -> dict[str, torch.Tensor]:
        """Training targets made from the augmented mask; subclasses choose what the model learns."""
        small = area_downsampled(mask, self.mask_factor)
        if small is not None:
            return {"mask": torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))}
        return {"mask": mask_to_tensor(mask)}

    def _prepare_worker(self) -> None:
        """Reseed the augmentations once per DataLoader worker (and per epoch) and quiet OpenCV threads
        there; without workers, once from ``torch.initial_seed()``.

        albumentations 2.x keeps its random state inside the Compose object, and forked or pickled
        workers all start from a copy of the same state: without this every worker, in every epoch,
        would replay the same sequence of crops and flips. The worker's seed differs per worker and
        per epoch and follows ``torch.manual_seed`` in the main process, so runs stay reproducible;
        loading in the main process (``num_workers: 0``) follows the same seed.
        """
        worker = get_worker_info()
        seed = torch.initial_seed() if worker is None else worker.seed
        if seed == self._worker_seed:
            return
        self._worker_seed = seed
        if worker is not None:
            cv2.setNumThreads(0)  # workers are the parallelism; OpenCV threads on top only contend
        transforms = self.transform.values() if isinstance(self.transform, Mapping) else [self.transform]
        for offset, transform in enumerate(transforms):
            if transform is not None:
                seed_transform(transform, seed + offset)


class ClassificationDataset(SegmentationDataset):
    """The same images, with ``target``: float32 (4,) labels, 1 where a class is present.

    Labels are taken from the augmented mask, so a crop that leaves a defect out is labelled
    without it: the label describes what the model sees. Without augmentation this is exactly
    ``formats.class_presence`` of the table.
    """

    def mask_targets(self, mask: np.ndarray) -> dict[str, torch.Tensor]:
        present = mask.reshape(-1, mask.shape[-1]).any(axis=0)
        return {"target": torch.from_numpy(present.astype(np.float32))}


class ImageLabelDataset(SegmentationDataset):
    """Images with image-level labels only (a presence table: ``ImageId``, ``has_1`` .. ``has_4``):
    items ``image``, ``target`` (float32 (4,), the table's labels) as ``ClassificationDataset`` gives,
    ``image_id`` and ``index``. No mask to follow the augmentation: a crop keeps the whole image's
    labels, which is why ``data.weak`` refuses crops."""

    def __init__(self, presence: pd.DataFrame, images_dir: str | os.PathLike, **options: object) -> None:
        super().__init__(presence, images_dir, with_masks=False, **options)
        self.targets = presence[list(PRESENCE_COLUMNS)].to_numpy(dtype=np.float32)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        item = super().__getitem__(key)
        index = key[0] if isinstance(key, tuple) else key
        item["target"] = torch.from_numpy(self.targets[index])
        return item
