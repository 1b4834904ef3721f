"""Turn per-pixel class probabilities into the binary masks a submission holds.

Per class, in this order: (1) pixel threshold ``prob > threshold``, (2) optional hole filling,
(3) removal of connected components (8-connectivity) smaller than ``min_size`` pixels, (4) the whole
mask is dropped when fewer than ``min_area`` pixels survive, (5) when the image classifier's
probability for the class is below ``gate``, the mask is dropped (``gate_factor`` None: the hard gate)
or kept only if it has at least ``min_area * gate_factor`` pixels (the soft gate of the 55th place). The out-of-fold statistics
(``common_blocks.evaluation.oof_stats``) reproduce these steps exactly, so the searched score is the score
inference gets.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from common_blocks.data.formats import CLASS_IDS


class ClassPostprocess(BaseModel):
    """Post-processing of one class; the defaults keep every pixel above 0.5."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.5, ge=0, le=1, description="a pixel is kept where the class's probability is above this"
    )
    min_size: int = Field(
        0, ge=0, description="connected components (8-connected) smaller than this many pixels are removed"
    )
    min_area: int = Field(0, ge=0, description="the mask is dropped when fewer pixels than this survive")
    gate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="the class is gated when the gate's probability for it is below this (0 = never)",
    )
    gate_factor: float | None = Field(
        None,
        ge=1,
        description="a gated class keeps its mask only with at least `min_area` x this many pixels (the soft "
        "gate); null = a gated class is dropped (the hard gate)",
    )
    fill_holes: bool = Field(False, description="fill the mask's holes after the threshold")

    def rendered(self) -> dict[str, str]:
        """Each setting as people read it (``severstal oof``'s summary, the report's table): the one
        place that lists them, so that no view leaves one out."""
        return {
            "threshold": f"{self.threshold:g}",
            "min size": str(self.min_size),
            "min area": str(self.min_area),
            "gate": f"{self.gate:g}",
            "gate factor": "none (hard gate)" if self.gate_factor is None else f"x{self.gate_factor:g}",
            "fill holes": "yes" if self.fill_holes else "no",
        }

    def required_area(self, gated: bool) -> float:
        """Steps 4-5: the fewest pixels a mask keeps (infinite: dropped whatever its size)."""
        if not gated:
            return float(self.min_area)
        return float("inf") if self.gate_factor is None else self.min_area * self.gate_factor


def _default_classes() -> tuple[ClassPostprocess, ...]:
    return tuple(ClassPostprocess() for _ in CLASS_IDS)


class PostprocessConfig(BaseModel):
    """Post-processing of the four classes, in class order 1..4 (``model_dump()`` gives YAML/JSON)."""

    model_config = ConfigDict(extra="forbid")

    classes: tuple[ClassPostprocess, ClassPostprocess, ClassPostprocess, ClassPostprocess] = Field(
        default_factory=_default_classes, description="four entries, classes 1 to 4"
    )


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the background regions that do not reach the image border (4-connected, as scipy's
    ``binary_fill_holes``): flood the border-connected background and keep everything else."""
    height, width = mask.shape
    canvas = np.zeros((height + 2, width + 2), np.uint8)
    canvas[1:-1, 1:-1] = mask
    cv2.floodFill(canvas, None, (0, 0), 2, flags=4)
    return (canvas[1:-1, 1:-1] != 2).view(np.uint8)


def binary_mask(prob: np.ndarray, threshold: float, fill_holes: bool) -> np.ndarray:
    """Steps 1-2 as an (H, W) uint8 0/1 mask.

    The threshold is compared in the dtype of ``prob``, so that a float32 map gives the same mask
    whether the threshold arrives as a Python float (inference) or a float64 grid value (statistics).
    """
    mask = (prob > prob.dtype.type(threshold)).view(np.uint8)
    return fill_mask_holes(mask) if fill_holes else mask


def _check_probs(probs: np.ndarray, ndim: int) -> None:
    if probs.ndim != ndim or not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"expected a floating {ndim}-d probability array, got {probs.dtype} {probs.shape}")


def postprocess_mask(prob: np.ndarray, cfg: ClassPostprocess, gate_prob: float | None = None) -> np.ndarray:
    """Apply steps 1-5 to an (H, W) probability map; (H, W) uint8 0/1.

    ``gate_prob`` None (or NaN) means no classifier, so the gate never applies. It is compared in
    float64, as the statistics compare it.
    """
    _check_probs(prob, 2)
    empty = np.zeros(prob.shape, np.uint8)
    required = cfg.required_area(gate_prob is not None and float(gate_prob) < cfg.gate)
    if required == float("inf"):
        return empty
    mask = binary_mask(prob, cfg.threshold, cfg.fill_holes)
    if cfg.min_size > 0:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = (stats[:, cv2.CC_STAT_AREA] >= cfg.min_size).view(np.uint8)
        keep[0] = 0  # label 0 is the background
        mask = keep[labels]
    if cv2.countNonZero(mask) < required:
        return empty
    return mask
