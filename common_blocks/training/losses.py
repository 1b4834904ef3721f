"""Losses as weighted sums of registered terms, and the target each task mode's loss compares with.

The task modes (what the logits mean, their probabilities) live in ``modes``. In multiclass
targets a pixel carries one class; where the dataset's class masks overlap, the higher class id wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from segmentation_models_pytorch.losses import (
    DiceLoss,
    FocalLoss,
    LovaszLoss,
    SoftBCEWithLogitsLoss,
    SoftCrossEntropyLoss,
)
from torch import Tensor, nn

from common_blocks.errors import ConfigError
from common_blocks.training.modes import (
    BINARY_MODE,
    CLASSIFICATION_MODE,
    MODES,
    MULTICLASS_MODE,
    MULTILABEL_MODE,
    NUM_OUTPUTS,
    SEGMENTATION_MODES,
    check_mode,
)


class LossTerm(BaseModel):
    """One term of the loss: ``type`` is a key of ``LOSSES``, ``args`` go to the loss class."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        description="`bce`, `soft_bce`, `focal` (all tasks), `dice`, `lovasz` (per-image Lovasz hinge; "
        "segmentation)"
    )
    weight: float = Field(1.0, description="the term's weight in the sum")
    args: dict[str, Any] = Field(
        {},
        description="keyword arguments of the term's loss class (smp's or torch's)",
        json_schema_extra={
            "documented_args": {
                "pos_weight": {
                    "default": None,
                    "description": "`bce`: one weight per output for its defect pixels, e.g. `[2, 2, 1, 1.5]` "
                    "(1st place); not in `multiclass` mode",
                },
                "smooth_factor": {"default": 0.0, "description": "`soft_bce`: label smoothing"},
                "per_image": {
                    "default": True,
                    "description": "`lovasz`: the loss per image, averaged (false: over the whole batch)",
                },
            }
        },
    )


def _smp_mode(mode: str) -> str:
    """Image-level labels are multilabel over 4 classes, with no spatial dimensions."""
    return MULTILABEL_MODE if mode == CLASSIFICATION_MODE else mode


def _bce(mode: str, pos_weight: list[float] | None = None, **args: Any) -> nn.Module:
    """BCE on logits (cross-entropy in multiclass mode); ``pos_weight`` weighs each class's defect
    pixels (the 1st place used 2, 2, 1, 1.5: the rare, thin classes 1 and 2 count more)."""
    if mode == MULTICLASS_MODE:
        if pos_weight is not None:
            raise ValueError("pos_weight applies to sigmoid modes; multiclass cross-entropy takes 'weight'")
        return nn.CrossEntropyLoss(**args)
    if pos_weight is not None:
        outputs = NUM_OUTPUTS[mode]
        if not isinstance(pos_weight, list) or len(pos_weight) != outputs:
            raise ValueError(
                f"pos_weight: expected a list of {outputs} numbers (one per output), got {pos_weight!r}"
            )
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in pos_weight):
            raise ValueError(f"pos_weight: expected positive numbers, got {pos_weight!r}")
        weights = torch.tensor(pos_weight, dtype=torch.float32)
        # broadcast over the (B, C, H, W) logits of segmentation, the (B, C) ones of classification
        args["pos_weight"] = weights if mode == CLASSIFICATION_MODE else weights.view(-1, 1, 1)
    return nn.BCEWithLogitsLoss(**args)


def _soft_bce(mode: str, **args: Any) -> nn.Module:
    """Label-smoothed BCE (``smooth_factor``); cross-entropy in multiclass mode.

    ``smooth_factor`` defaults to 0 because smp's SoftCrossEntropyLoss fails on its own default (None).
    """
    args = {"smooth_factor": 0.0, **args}
    return SoftCrossEntropyLoss(**args) if mode == MULTICLASS_MODE else SoftBCEWithLogitsLoss(**args)


def _dice(mode: str, **args: Any) -> nn.Module:
    return DiceLoss(_smp_mode(mode), **args)


def _focal(mode: str, **args: Any) -> nn.Module:
    return FocalLoss(_smp_mode(mode), **args)


def _lovasz(mode: str, **args: Any) -> nn.Module:
    """Lovasz hinge (sigmoid modes) or Lovasz-softmax, averaged per image unless ``per_image: false``.

    In multilabel mode smp flattens the 4 channels of an image into one binary problem.
    """
    return LovaszLoss(_smp_mode(mode), **{"per_image": True, **args})


# Each loss: a factory ``(mode, **args) -> nn.Module`` and the modes it supports.
LOSSES: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "bce": (_bce, MODES),
    "soft_bce": (_soft_bce, MODES),
    "focal": (_focal, MODES),
    "dice": (_dice, SEGMENTATION_MODES),
    "lovasz": (_lovasz, SEGMENTATION_MODES),
}


class WeightedLoss(nn.Module):
    """Sum of ``weight * term(logits, target)``.

    ``forward`` returns the total; ``last_terms`` then holds each term's unweighted value (detached,
    keyed by term name) for logging without a device sync per term.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = weights
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        values = {name: term(logits, target) for name, term in self.terms.items()}
        self.last_terms = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())


def build_loss(terms: list[LossTerm], mode: str, key: str = "loss") -> WeightedLoss:
    """The weighted sum of ``terms`` for ``mode``.

    Terms are named by type; a repeated type gets its 1-based position appended (``dice``, ``dice_3``).
    """
    check_mode(mode)
    if not terms:
        raise ConfigError(f"{key}: needs at least one loss term")
    modules: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    for index, term in enumerate(terms):
        path = f"{key}[{index}]"
        if term.type not in LOSSES:
            raise ConfigError(f"{path}.type: unknown loss '{term.type}' (registered: {', '.join(LOSSES)})")
        factory, modes = LOSSES[term.type]
        if mode not in modes:
            raise ConfigError(f"{path}.type: loss '{term.type}' does not support mode '{mode}'")
        try:
            module = factory(mode, **term.args)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{path}.args: {error}") from error
        name = term.type if term.type not in modules else f"{term.type}_{index + 1}"
        modules[name], weights[name] = module, term.weight
    return WeightedLoss(modules, weights)


def targets_for_mode(mask: Tensor, mode: str) -> Tensor:
    """The dataset's float ``(B, 4, H, W)`` mask as ``mode``'s target.

    multilabel: as is; binary: ``(B, 1, H, W)`` union of the classes; multiclass: long ``(B, H, W)``
    with 0 = background and the highest present class id where classes overlap; classification:
    ``(B, 4)`` presence of each class.
    """
    check_mode(mode)
    if mode == MULTILABEL_MODE:
        return mask
    if mode == BINARY_MODE:
        return mask.amax(dim=1, keepdim=True)
    if mode == CLASSIFICATION_MODE:
        return mask.amax(dim=(2, 3))
    class_ids = torch.arange(1, mask.shape[1] + 1, device=mask.device).view(1, -1, 1, 1)
    return ((mask > 0.5) * class_ids).amax(dim=1)
