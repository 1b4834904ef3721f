"""Augmentation pipelines (albumentations 2.x) built from a validated config.

The pipelines work on uint8 images and HxWx4 masks; normalisation is not part of them (see
``datasets.to_tensor``) so that inference, which has no augmentation, normalises the same way.
"""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop

from common_blocks.data.augment_config import AugmentConfig


class DefectCrop(BaseCrop):
    """A height x width crop that holds a random defect pixel of the mask; a random crop when there is none.

    The same choice as ``A.CropNonEmptyMaskIfExists``, which on a 256x1600x4 mask spends ~10 ms
    summing the channels (a numpy reduction over a short last axis) and in ``argwhere``: most of
    a training item's time. Reading each pixel's 4 channels as one uint32 and picking a nonzero
    one by flat index costs ~0.5 ms.
    """

    def __init__(self, height: int, width: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.height = height
        self.width = width

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if "mask" not in data:
            raise ValueError("DefectCrop needs the mask: call the transform with mask=...")
        mask = data["mask"]
        mask_height, mask_width = mask.shape[:2]
        if self.height > mask_height or self.width > mask_width:
            raise ValueError(
                f"crop {self.height}x{self.width} is larger than the {mask_height}x{mask_width} image"
            )
        defect_pixels = _defect_pixels(mask)
        if defect_pixels.size:
            y, x = divmod(int(defect_pixels[self.py_random.randrange(defect_pixels.size)]), mask_width)
            x_min = min(max(x - self.py_random.randint(0, self.width - 1), 0), mask_width - self.width)
            y_min = min(max(y - self.py_random.randint(0, self.height - 1), 0), mask_height - self.height)
        else:
            x_min = self.py_random.randint(0, mask_width - self.width)
            y_min = self.py_random.randint(0, mask_height - self.height)
        return {"crop_coords": (x_min, y_min, x_min + self.width, y_min + self.height)}


def _defect_pixels(mask: np.ndarray) -> np.ndarray:
    """Flat (row-major) indices of the pixels that are nonzero in any channel of an HxW or HxWxC mask."""
    pixels = np.ascontiguousarray(mask).reshape(*mask.shape[:2], -1)
    bytes_per_pixel = pixels.shape[-1] * pixels.itemsize
    if pixels.dtype.kind in "biu" and bytes_per_pixel in (1, 2, 4, 8):
        # All channels of a pixel read as one unsigned integer, nonzero when any channel is: one
        # pass over the mask instead of a reduction over a short last axis (~10x slower).
        return np.flatnonzero(pixels.view(f"u{bytes_per_pixel}"))
    return np.flatnonzero(pixels.any(axis=-1))


class DefectBlackout(A.DualTransform):
    """Paint one defect component black in the image and remove its pixels from every class's mask.

    The component is drawn uniformly among the 8-connected components of all class channels;
    nothing happens to an image without defects. ``A.MaskDropout`` is the close relative, but it
    labels a multi-channel mask as one 3-d volume.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if "mask" not in data:
            raise ValueError("DefectBlackout needs the mask: call the transform with mask=...")
        mask = data["mask"]
        channels = mask.reshape(*mask.shape[:2], -1)
        labelled = [
            cv2.connectedComponents((channels[..., c] > 0).view(np.uint8), connectivity=8)
            for c in range(channels.shape[-1])
        ]
        counts = [count - 1 for count, _ in labelled]  # label 0 is the background
        if not sum(counts):
            return {"hole": None}
        pick = self.py_random.randrange(sum(counts))
        for count, labels in labelled:
            if pick < count - 1:
                return {"hole": labels == pick + 1}
            pick -= count - 1
        raise AssertionError("unreachable: the pick lies below the number of components")

    def apply(self, img: np.ndarray, hole: np.ndarray | None = None, **params: Any) -> np.ndarray:
        if hole is None:
            return img
        img = img.copy()
        img[hole] = 0
        return img

    def apply_to_mask(self, mask: np.ndarray, hole: np.ndarray | None = None, **params: Any) -> np.ndarray:
        return self.apply(mask, hole)


def _crop(cfg: AugmentConfig, width: int | None) -> list[A.BasicTransform | A.BaseCompose]:
    """The crop step: a weighted choice between a defect-centred and a random patch of the same size."""
    if cfg.crop_height is None or width is None:
        return []
    size = {"height": cfg.crop_height, "width": width}
    choices = [
        DefectCrop(**size, p=cfg.crop_prefer_defect),
        A.RandomCrop(**size, p=1 - cfg.crop_prefer_defect),
    ]
    # OneOf treats the p's as weights; a zero weight would divide by zero or be dead weight.
    return [A.OneOf([choice for choice in choices if choice.p > 0], p=1)]


def build_train_transform(
    cfg: AugmentConfig, seed: int | None = None, crop_width: int | None = None
) -> A.Compose:
    """Crop, blackout, flips and brightness/contrast jitter; plain albumentations objects, so it
    pickles into workers.

    Crops come first so the later steps touch only the patch (and blackout a component in it). ``seed`` makes the sequence of
    augmentations reproducible (DataLoader workers reseed it, see ``SegmentationDataset``).
    ``crop_width`` is the width of this pipeline's crops when ``cfg.crop_widths`` offers several.
    """
    transform = A.Compose(
        [
            *_crop(cfg, crop_width if cfg.crop_widths else cfg.crop_width),
            *([DefectBlackout(p=cfg.blackout)] if cfg.blackout > 0 else []),
            A.HorizontalFlip(p=cfg.hflip),
            A.VerticalFlip(p=cfg.vflip),
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness_limit,
                contrast_limit=cfg.contrast_limit,
                p=cfg.brightness_contrast,
            ),
        ]
    )
    if seed is not None:
        seed_transform(transform, seed)
    return transform


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Give all steps of ``transform`` one shared generator seeded with ``seed``.

    Not ``Compose(seed=...)`` / ``set_random_seed``: albumentations 2.x then seeds every step with
    the same value, so e.g. a horizontal and a vertical flip of equal probability always fire together.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
