"""Plain reference implementations that tests hold the fast library code against: dense masks where
the library works on run lengths, area statistics or one plane at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common_blocks.data.formats import N_CLASSES
from common_blocks.evaluation.metric import dice_from_areas
from common_blocks.evaluation.postprocess import PostprocessConfig, postprocess_mask


def mask_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of binary masks over their last two axes (..., H, W) -> (...), the competition's way."""
    pred = pred.astype(bool)
    truth = truth.astype(bool)
    return dice_from_areas(
        (pred & truth).sum(axis=(-2, -1)), pred.sum(axis=(-2, -1)), truth.sum(axis=(-2, -1))
    )


def postprocess_image(
    probs: np.ndarray, config: PostprocessConfig, gate_probs: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Each class's post-processing applied to (4, H, W) probabilities: (4, H, W) uint8 0/1."""
    assert probs.shape[0] == N_CLASSES and (gate_probs is None or len(gate_probs) == N_CLASSES)
    return np.stack(
        [
            postprocess_mask(prob, cfg, None if gate_probs is None else float(gate_probs[k]))
            for k, (prob, cfg) in enumerate(zip(probs, config.classes, strict=True))
        ]
    )
