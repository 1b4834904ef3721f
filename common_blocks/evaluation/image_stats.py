"""One image's out-of-fold statistics (``image_stats``): for every class and every (threshold t,
minimum component size m) of the grid, the area ``A[t, m]`` after post-processing steps 1-3 and its
intersection ``I[t, m]`` with the true mask, plus the true area ``G``.

The areas come from one sweep per class instead of one component labelling per threshold: the masks
are nested (a higher threshold keeps a subset of the pixels, and hole filling keeps the nesting), so
pixels are added from the highest threshold level down to the lowest while a union-find merges
their 8-connected components, and the sums of component sizes (and truth hits) above every minimum
size are kept up to date at each merge and read off when a level is complete. ``oof_stats`` holds
these statistics for a set of images.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numba
import numpy as np

from common_blocks.data.formats import N_CLASSES
from common_blocks.evaluation.postprocess import binary_mask
from common_blocks.evaluation.search_grid import (
    DEFAULT_MIN_SIZES,
    DEFAULT_THRESHOLDS,
    NO_FILL,
    fill_flags,
    min_size_grid,
    threshold_grid,
)


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
