"""Out-of-fold statistics from which any post-processing on a grid is scored exactly, without the images.

Per (image, class), for every pixel threshold t and minimum component size m of the grid, we keep
the predicted area ``A[t, m]`` after post-processing steps 1-3 (threshold, hole filling, small
component removal; see ``common_blocks.evaluation.postprocess``) and its intersection ``I[t, m]`` with the true
mask, plus the true area ``G``. Steps 4-5 only decide whether the whole mask is dropped, so for a
minimum area a and gate g the prediction is empty iff ``A[t, m] < a`` or the classifier probability
is below g, and otherwise its Dice is ``2 I / (A + G)``: every setting is scored from a few integers.

Here: ``OofStats``, those of a set of images, checked, merged and saved as ``oof.npz``, and
``OofStatsBuilder``, which adds them image by image; one image's come from ``image_stats``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.image_stats import image_stats
from common_blocks.evaluation.search_grid import (
    DEFAULT_MIN_SIZES,
    DEFAULT_THRESHOLDS,
    NO_FILL,
    fill_flags,
    min_size_grid,
    one_line,
    threshold_grid,
)
from common_blocks.files import atomic_output

FORMAT_VERSION = 1


_ARRAY_FIELDS = (
    "image_ids",
    "folds",
    "thresholds",
    "min_sizes",
    "fill_holes",
    "area",
    "intersection",
    "truth_area",
    "gate",
)


def _counts(values: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != shape:
        raise DataError(f"{name}: expected shape {shape}, got {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{name}: expected pixel counts (integers), got {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint32).max):
        raise DataError(f"{name}: pixel counts out of the uint32 range")
    return values.astype(np.uint32, copy=False)


def _describe_ids(ids: Sequence[str] | np.ndarray, limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return f"{shown} (and {len(ids) - limit} more)" if len(ids) > limit else shown


def _duplicates(image_ids: np.ndarray) -> np.ndarray:
    unique, counts = np.unique(image_ids, return_counts=True)
    return unique[counts > 1]


@dataclass(eq=False)
class OofStats:
    """Statistics of N out-of-fold images on a (T thresholds) x (M minimum sizes) grid.

    ``gate`` holds the classifier's probabilities, NaN where there is no classifier (the gate then
    never drops a mask, as ``postprocess_mask`` with ``gate_prob=None``). ``folds`` is -1 where unknown.
    Construction checks shapes and consistency and converts dtypes; a problem raises DataError.
    """

    image_ids: np.ndarray  # (N,) str
    folds: np.ndarray  # (N,) int64
    thresholds: np.ndarray  # (T,) float64
    min_sizes: np.ndarray  # (M,) int64
    fill_holes: tuple[bool, bool, bool, bool]
    area: np.ndarray  # (N, 4, T, M) uint32, predicted area after steps 1-3
    intersection: np.ndarray  # (N, 4, T, M) uint32, its intersection with the truth
    truth_area: np.ndarray  # (N, 4) uint32
    gate: np.ndarray  # (N, 4) float32

    def __post_init__(self) -> None:
        try:
            self.thresholds = threshold_grid(self.thresholds)
            self.min_sizes = min_size_grid(self.min_sizes)
            self.fill_holes = fill_flags(self.fill_holes)
        except ConfigError as error:
            raise DataError(str(error)) from None
        self.image_ids = np.asarray(self.image_ids, dtype=str)
        if self.image_ids.ndim != 1:
            raise DataError(f"image_ids: expected a 1-d array, got shape {self.image_ids.shape}")
        n = self.n_images
        duplicated = _duplicates(self.image_ids)
        if duplicated.size:
            raise DataError(f"{duplicated.size} duplicate image id(s): {_describe_ids(duplicated)}")
        self.folds = np.asarray(self.folds)
        if self.folds.shape != (n,) or not np.issubdtype(self.folds.dtype, np.integer):
            raise DataError(f"folds: expected {n} integers, got {self.folds.dtype} {self.folds.shape}")
        self.folds = self.folds.astype(np.int64, copy=False)
        grid_shape = (n, N_CLASSES, self.thresholds.size, self.min_sizes.size)
        self.area = _counts(self.area, "area", grid_shape)
        self.intersection = _counts(self.intersection, "intersection", grid_shape)
        self.truth_area = _counts(self.truth_area, "truth_area", (n, N_CLASSES))
        if np.any(self.intersection > self.area) or np.any(
            self.intersection > self.truth_area[..., None, None]
        ):
            raise DataError("intersection exceeds the predicted or the true area")
        self.gate = np.asarray(self.gate, dtype=np.float32)
        if self.gate.shape != (n, N_CLASSES):
            raise DataError(f"gate: expected shape {(n, N_CLASSES)}, got {self.gate.shape}")
        if np.any((self.gate < 0) | (self.gate > 1)):
            raise DataError("gate: probabilities must lie in [0, 1] (NaN = no classifier)")

    @property
    def n_images(self) -> int:
        return int(self.image_ids.shape[0])

    @classmethod
    def merge(cls, parts: Sequence[OofStats]) -> OofStats:
        """The statistics of disjoint image sets made on one grid (DDP ranks' shards) as one."""
        first = parts[0]
        for part in parts[1:]:
            same_grid = (
                np.array_equal(part.thresholds, first.thresholds)
                and np.array_equal(part.min_sizes, first.min_sizes)
                and part.fill_holes == first.fill_holes
            )
            if not same_grid:
                raise DataError("cannot merge OOF stats made on different grids")
        arrays = {
            name: np.concatenate([getattr(part, name) for part in parts])
            for name in ("image_ids", "folds", "area", "intersection", "truth_area", "gate")
        }
        return cls(
            thresholds=first.thresholds, min_sizes=first.min_sizes, fill_holes=first.fill_holes, **arrays
        )

    @property
    def has_gate(self) -> bool:
        """Whether any classifier probability is attached."""
        return bool(np.isfinite(self.gate).any())

    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed .npz (one array per field plus ``format_version``), atomically."""
        arrays = {name: getattr(self, name) for name in _ARRAY_FIELDS}
        arrays["fill_holes"] = np.asarray(self.fill_holes, dtype=bool)
        with atomic_output(path) as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(handle, format_version=np.int64(FORMAT_VERSION), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> OofStats:
        """Read a file written by ``save``; a missing, foreign or inconsistent file raises DataError."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: OOF stats file not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [name for name in ("format_version", *_ARRAY_FIELDS) if name not in data.files]
                if missing:
                    raise DataError(f"{path}: not an OOF stats file (missing {', '.join(missing)})")
                version = data["format_version"]
                if version.shape != () or version.dtype.kind not in "iu" or version != FORMAT_VERSION:
                    raise DataError(
                        f"{path}: OOF stats format version {one_line(version)}, this code reads {FORMAT_VERSION}"
                    )
                arrays = {name: data[name] for name in _ARRAY_FIELDS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(f"{path}: not a readable OOF stats file ({error})") from None
        try:
            arrays["fill_holes"] = list(arrays["fill_holes"].tolist())
            return cls(**arrays)
        except (TypeError, ValueError) as error:  # an array of the wrong kind, e.g. 0-d where 1-d belongs
            raise DataError(f"{path}: not an OOF stats file ({error})") from None
        except DataError as error:
            raise DataError(f"{path}: {error}") from None


class OofStatsBuilder:
    """Accumulate statistics image by image (training validation, ensemble validation), so that no
    probability map outlives its batch."""

    def __init__(
        self,
        thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
        min_sizes: Sequence[int] | np.ndarray = DEFAULT_MIN_SIZES,
        fill_holes: Sequence[bool] = NO_FILL,
    ) -> None:
        self.thresholds = threshold_grid(thresholds)
        self.min_sizes = min_size_grid(min_sizes)
        self.fill_holes = fill_flags(fill_holes)
        # Each list starts with an empty batch, so that build() works before any add() (an idle rank).
        grid = (self.thresholds.size, self.min_sizes.size)
        self._image_ids: list[str] = []
        self._folds = [np.zeros(0, np.int64)]
        self._area = [np.zeros((0, N_CLASSES, *grid), np.uint32)]
        self._intersection = [np.zeros((0, N_CLASSES, *grid), np.uint32)]
        self._truth_area = [np.zeros((0, N_CLASSES), np.uint32)]
        self._gate = [np.zeros((0, N_CLASSES), np.float32)]

    def __len__(self) -> int:
        return len(self._image_ids)

    def add(
        self,
        image_ids: Sequence[str],
        probs: np.ndarray,
        truths: np.ndarray,
        folds: int | Sequence[int] | np.ndarray | None = None,
        gate: np.ndarray | None = None,
    ) -> None:
        """Add a batch: probabilities (B, 4, H, W), true masks (B, 4, H, W), optional folds and (B, 4) gate."""
        probs = np.asarray(probs)
        truths = np.asarray(truths)
        batch = len(image_ids)
        if probs.ndim != 4 or probs.shape[0] != batch:
            raise ValueError(f"expected probabilities of shape ({batch}, 4, H, W), got {probs.shape}")
        fold_values = np.broadcast_to(np.asarray(-1 if folds is None else folds, dtype=np.int64), (batch,))
        gate_values = np.full((batch, N_CLASSES), np.nan, np.float32) if gate is None else np.asarray(gate)
        if gate_values.shape != (batch, N_CLASSES):
            raise ValueError(f"expected gate probabilities of shape ({batch}, 4), got {gate_values.shape}")
        if batch == 0:
            return
        stats = [
            image_stats(prob, truth, self.thresholds, self.min_sizes, self.fill_holes)
            for prob, truth in zip(probs, truths, strict=True)
        ]
        area, intersection, truth_area = (np.stack(arrays) for arrays in zip(*stats, strict=True))
        self._image_ids.extend(str(i) for i in image_ids)
        self._folds.append(fold_values)
        self._area.append(area)
        self._intersection.append(intersection)
        self._truth_area.append(truth_area)
        self._gate.append(gate_values.astype(np.float32))

    def build(self) -> OofStats:
        """The statistics of every image added so far (possibly none)."""
        return OofStats(
            image_ids=np.asarray(self._image_ids, dtype=str),
            folds=np.concatenate(self._folds),
            thresholds=self.thresholds,
            min_sizes=self.min_sizes,
            fill_holes=self.fill_holes,
            area=np.concatenate(self._area),
            intersection=np.concatenate(self._intersection),
            truth_area=np.concatenate(self._truth_area),
            gate=np.concatenate(self._gate),
        )
