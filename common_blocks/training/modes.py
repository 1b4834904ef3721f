"""The task modes: what a network's logits mean, how many it has, and the probabilities they give.

The smp segmentation modes ``"multilabel"`` (4 sigmoid channels), ``"binary"`` (1 sigmoid channel:
defect or not, the class then comes from the classifier gate) and ``"multiclass"`` (5 softmax
channels, 0 = background), plus ``"classification"`` (image-level ``(B, 4)`` logits). Training (the
losses and their targets) and prediction (the ensemble, the exported networks) read them here.
"""

from __future__ import annotations

from torch import Tensor

from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import (
    BINARY_MODE,
    CLASSIFICATION_MODE,
    MODES,
    MULTICLASS_MODE,
    MULTILABEL_MODE,
)

NUM_OUTPUTS = {
    MULTILABEL_MODE: N_CLASSES,
    BINARY_MODE: 1,
    MULTICLASS_MODE: N_CLASSES + 1,
    CLASSIFICATION_MODE: N_CLASSES,
}


def check_mode(mode: str) -> None:
    """A ConfigError unless ``mode`` is one of ``MODES``."""
    if mode not in MODES:
        raise ConfigError(f"mode: unknown mode '{mode}' (expected one of: {', '.join(MODES)})")


def num_outputs_for_mode(mode: str) -> int:
    """Logit channels a network needs for ``mode`` (4 multilabel, 1 binary, 5 multiclass, 4 classification)."""
    check_mode(mode)
    return NUM_OUTPUTS[mode]


def probabilities(logits: Tensor, mode: str) -> Tensor:
    """Per-class probabilities ``(B, 4, H, W)`` (``(B, 4)`` for classification) from ``mode``'s logits.

    Binary mode repeats its defect probability over the 4 classes: the classifier gate picks the class.
    Multiclass drops the background channel of the softmax.
    """
    check_mode(mode)
    if mode == MULTICLASS_MODE:
        return logits.softmax(dim=1)[:, 1:]
    probability = logits.sigmoid()
    return probability.repeat(1, N_CLASSES, 1, 1) if mode == BINARY_MODE else probability
