"""Out-of-fold statistics from which any post-processing on a grid is scored exactly, without the images.

Per (image, class), for every pixel threshold t and minimum component size m of the grid, we keep
the predicted area ``A[t, m]`` after post-processing steps 1-3 (threshold, hole filling, small
component removal; see ``common_blocks.evaluation.postprocess``) and its intersection ``I[t, m]`` with the true
mask, plus the true area ``G``. Steps 4-5 only decide whether the whole mask is dropped, so for a
minimum area a and gate g the prediction is empty iff ``A[t, m] < a`` or the classifier probability
is below g, and otherwise its Dice is ``2 I / (A + G)``: every setting is scored from a few integers.

The areas come from one sweep per class instead of one component labelling per threshold: the masks
are nested (a higher threshold keeps a subset of the pixels, and hole filling keeps the nesting), so
pixels are added from the highest threshold level down to the lowest while a union-find merges
their 8-connected components, and the sums of component sizes (and truth hits) above every minimum
size are kept up to date at each merge and read off when a level is complete.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numba
import numpy as np

from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.postprocess import binary_mask
from common_blocks.files import atomic_output

FORMAT_VERSION = 1
DEFAULT_THRESHOLDS = (0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80)
DEFAULT_MIN_SIZES = (0, 50, 100, 200, 400, 800)
DEFAULT_MIN_AREAS = (0, 200, 400, 600, 800, 1000, 1500, 2000, 3000, 4000, 6000, 8000)
DEFAULT_GATES = (0.0, 0.3, 0.4, 0.5, 0.6)
NO_FILL = (False,) * N_CLASSES
MAX_LEVELS = 255  # threshold levels are counted in uint8


def _one_line(values: object, limit: int = 80) -> str:
    """``values`` for an error line: arrays as lists, whitespace collapsed (numpy wraps long reprs), cut short."""
    text = " ".join(repr(values.tolist() if isinstance(values, np.ndarray) else values).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_grid(
    values: Sequence[float] | np.ndarray, name: str, dtype: type, low: float, high: float
) -> np.ndarray:
    """A search grid as a 1-d array, strictly increasing (the statistics rely on nested masks) and in range."""
    try:
        raw = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a list of numbers, got {_one_line(values)}") from None
    if raw.ndim != 1 or raw.size == 0 or not np.isfinite(raw).all():
        raise ConfigError(f"{name}: expected a non-empty list of finite numbers, got {_one_line(values)}")
    grid = raw.astype(dtype)
    if not np.array_equal(grid, raw):
        raise ConfigError(f"{name}: expected whole numbers, got {raw.tolist()}")
    if np.any(np.diff(grid) <= 0):
        raise ConfigError(f"{name}: values must be strictly increasing, got {grid.tolist()}")
    if grid[0] < low or grid[-1] > high:
        raise ConfigError(f"{name}: values must lie in [{low}, {high}], got {grid.tolist()}")
    return grid


def threshold_grid(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Pixel thresholds in [0, 1], at most 255 of them (levels are counted in uint8)."""
    grid = as_grid(values, "thresholds", np.float64, 0.0, 1.0)
    if grid.size > MAX_LEVELS:
        raise ConfigError(f"thresholds: at most {MAX_LEVELS} values, got {grid.size}")
    return grid


def min_size_grid(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Minimum component sizes in pixels; 0 keeps every component."""
    return as_grid(values, "min_sizes", np.int64, 0, np.iinfo(np.int32).max)


def fill_flags(values: Sequence[bool]) -> tuple[bool, bool, bool, bool]:
    """One hole-filling flag per class."""
    flags = tuple(bool(v) for v in values)
    if len(flags) != N_CLASSES:
        raise ConfigError(f"fill_holes: expected {N_CLASSES} flags (one per class), got {len(flags)}")
    return flags


@numba.njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


@numba.njit(cache=True, nogil=True, inline="always")
def _tally(area, intersection, min_sizes, size, hits, sign) -> None:
    """Add (sign 1) or remove (sign -1) a component in the sums of every minimum size it reaches."""
    for j in range(min_sizes.size):
        if size < min_sizes[j]:
            break
        area[j] += sign * size
        intersection[j] += sign * hits


@numba.njit(cache=True, nogil=True)
def _sweep(levels, truth, min_sizes, area_out, intersection_out) -> None:
    """Fill (T, M) areas and intersections from a level map: a pixel of level k is in masks 0..k-1.

    Pixels live on a canvas with a one-pixel empty border, so neighbours need no bounds checks.
    The 8 neighbours are visited as a ring in which consecutive ones touch; active pixels that touch
    are always in one component already, so only the first of a run of active neighbours is merged.
    """
    height, width = levels.shape
    n_levels = area_out.shape[0]
    stride = width + 2
    counts = np.zeros(n_levels + 1, np.int64)
    for y in range(height):
        for x in range(width):
            counts[levels[y, x]] += 1
    n_active = height * width - counts[0]
    if n_active == 0:
        return
    # Counting sort of the active pixels, highest level first.
    next_slot = np.zeros(n_levels + 1, np.int64)
    position = 0
    for k in range(n_levels, 0, -1):
        next_slot[k] = position
        position += counts[k]
    order = np.empty(n_active, np.int32)
    hit = np.zeros((height + 2) * stride, np.uint8)
    for y in range(height):
        for x in range(width):
            node = (y + 1) * stride + x + 1
            hit[node] = truth[y, x] != 0
            k = levels[y, x]
            if k > 0:
                order[next_slot[k]] = node
                next_slot[k] += 1
    parent = np.full((height + 2) * stride, -1, np.int32)
    size = np.empty((height + 2) * stride, np.int32)
    hits = np.empty((height + 2) * stride, np.int32)
    ring = np.array([-stride, -stride + 1, 1, stride + 1, stride, stride - 1, -1, -stride - 1])
    area = np.zeros(min_sizes.size, np.int64)
    intersection = np.zeros(min_sizes.size, np.int64)
    i = 0
    for k in range(n_levels, 0, -1):
        end = i + counts[k]
        while i < end:
            node = order[i]
            i += 1
            parent[node] = node
            size[node] = 1
            hits[node] = hit[node]
            _tally(area, intersection, min_sizes, 1, hits[node], 1)
            root = node
            previous_active = False
            for offset in ring:
                neighbour = node + offset
                if parent[neighbour] < 0:
                    previous_active = False
                    continue
                if previous_active:
                    continue
                previous_active = True
                other = _find(parent, neighbour)
                if other == root:
                    continue
                _tally(area, intersection, min_sizes, size[root], hits[root], -1)
                _tally(area, intersection, min_sizes, size[other], hits[other], -1)
                if size[root] < size[other]:
                    root, other = other, root
                parent[other] = root
                size[root] += size[other]
                hits[root] += hits[other]
                _tally(area, intersection, min_sizes, size[root], hits[root], 1)
        area_out[k - 1, :] = area
        intersection_out[k - 1, :] = intersection


def _levels(prob: np.ndarray, thresholds: np.ndarray, fill_holes: bool) -> np.ndarray:
    """(H, W) uint8: in how many of the nested masks after steps 1-2 each pixel lies, so that the mask
    of threshold k is ``levels > k``."""
    levels = np.zeros(prob.shape, np.uint8)
    for threshold in thresholds:
        mask = binary_mask(prob, threshold, fill_holes)
        if not mask.any():
            break  # higher thresholds are empty too
        levels += mask
    return levels


def image_stats(
    probs: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    min_sizes: Sequence[int] | np.ndarray = DEFAULT_MIN_SIZES,
    fill_holes: Sequence[bool] = NO_FILL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statistics of one image: area (4, T, M), intersection (4, T, M) and true area (4,), all uint32.

    ``probs`` is (4, H, W) floating, ``truth`` (4, H, W) with nonzero = defect.
    """
    thresholds = threshold_grid(thresholds)
    min_sizes = min_size_grid(min_sizes)
    fill_holes = fill_flags(fill_holes)
    probs = np.asarray(probs)
    truth = np.asarray(truth)
    if probs.ndim != 3 or probs.shape[0] != N_CLASSES or not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(
            f"expected floating probabilities of shape (4, H, W), got {probs.dtype} {probs.shape}"
        )
    if truth.shape != probs.shape:
        raise ValueError(f"truth shape {truth.shape} does not match probabilities {probs.shape}")
    truth = np.ascontiguousarray(truth != 0).view(np.uint8)
    area = np.zeros((N_CLASSES, thresholds.size, min_sizes.size), np.uint32)
    intersection = np.zeros_like(area)
    for k in range(N_CLASSES):
        # Every mask lies inside the bounding box of the lowest threshold's mask, and so do its holes
        # (the background outside the box reaches the image border), so the box is all that is swept.
        x, y, width, height = cv2.boundingRect(binary_mask(probs[k], thresholds[0], fill_holes=False))
        box = (slice(y, y + height), slice(x, x + width))
        _sweep(
            _levels(probs[k][box], thresholds, fill_holes[k]),
            truth[k][box],
            min_sizes,
            area[k],
            intersection[k],
        )
    truth_area = np.count_nonzero(truth.reshape(N_CLASSES, -1), axis=1).astype(np.uint32)
    return area, intersection, truth_area


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
                        f"{path}: OOF stats format version {_one_line(version)}, this code reads {FORMAT_VERSION}"
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
