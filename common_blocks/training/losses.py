"""Losses as weighted sums of registered terms, and the target each task mode's loss compares with.

The task modes (what the logits mean, their probabilities) live in ``modes``. In multiclass
targets a pixel carries one class; where the dataset's class masks overlap, the higher class id wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import (
    DiceLoss,
    FocalLoss,
    LovaszLoss,
    SoftBCEWithLogitsLoss,
    SoftCrossEntropyLoss,
)
from torch import Tensor, nn

from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import LossName, LossTerm
from common_blocks.training.modes import (
    BINARY_MODE,
    CLASSIFICATION_MODE,
    MULTICLASS_MODE,
    MULTILABEL_MODE,
    NUM_OUTPUTS,
    check_mode,
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


def _class_weighted_bce(term: nn.Module, logits: Tensor, target: Tensor, class_weight: Tensor) -> Tensor:
    """The BCE of the (image, class) pairs whose ``class_weight`` is 1, averaged over their elements."""
    values = F.binary_cross_entropy_with_logits(logits, target, pos_weight=term.pos_weight, reduction="none")
    # in the values' dtype (fp32 under autocast): a count of elements in bf16 would be rounded
    weight = (
        class_weight.view(*class_weight.shape, *(1,) * (logits.ndim - 2)).expand_as(values).to(values.dtype)
    )
    return (values * weight).sum() / weight.sum().clamp_min(1)


def _class_weighted_dice(term: nn.Module, logits: Tensor, target: Tensor, class_weight: Tensor) -> Tensor:
    """smp's Dice with the (image, class) pairs whose ``class_weight`` is 0 taken out of its sums: their
    probabilities (sigmoid of -inf) and targets are 0, which add nothing to the intersection, the
    cardinality or the classes that count."""
    left_out = (class_weight == 0).view(*class_weight.shape, 1, 1)
    return term(logits.masked_fill(left_out, float("-inf")), target.masked_fill(left_out, 0))


# Losses that can leave a class of an image out (a pseudo-label's ``Ignored`` class), in multilabel and
# classification modes: ``(term, logits, target, class_weight) -> loss``.
CLASS_WEIGHTED: dict[str, Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]] = {
    "bce": _class_weighted_bce,
    "dice": _class_weighted_dice,
}


def check_class_weights(terms: list[LossTerm], mode: str, source: str) -> None:
    """A ConfigError unless every term can leave a class out per image, as ``source`` asks."""
    if mode not in (MULTILABEL_MODE, CLASSIFICATION_MODE):
        raise ConfigError(f"{source} leaves classes out of the loss, which needs mode multilabel, not {mode}")
    for index, term in enumerate(terms):
        if term.type not in CLASS_WEIGHTED:
            raise ConfigError(
                f"loss[{index}].type: '{term.type}' cannot leave a class out of the loss as {source} asks "
                f"(losses that can: {', '.join(CLASS_WEIGHTED)}; or make the round with --unsure drop)"
            )


# Each loss of ``config_sections.LOSS_MODES``: a factory ``(mode, **args) -> nn.Module`` (the config
# has checked that the mode is one the loss supports).
LOSSES: dict[LossName, Callable[..., nn.Module]] = {
    "bce": _bce,
    "soft_bce": _soft_bce,
    "focal": _focal,
    "dice": _dice,
    "lovasz": _lovasz,
}


class WeightedLoss(nn.Module):
    """Sum of ``weight * term(logits, target)``.

    ``forward`` returns the total; ``last_terms`` then holds each term's unweighted value (detached,
    keyed by term name) for logging without a device sync per term. With ``class_weight`` ((B, 4) of
    0/1) each term leaves out the (image, class) pairs of weight 0 (``CLASS_WEIGHTED``).
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float], types: dict[str, str]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = weights
        self.types = types
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor, class_weight: Tensor | None = None) -> Tensor:
        if class_weight is None:
            values = {name: term(logits, target) for name, term in self.terms.items()}
        else:
            values = {
                name: CLASS_WEIGHTED[self.types[name]](term, logits, target, class_weight)
                for name, term in self.terms.items()
            }
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
    types: dict[str, str] = {}
    for index, term in enumerate(terms):
        try:
            module = LOSSES[term.type](mode, **term.args)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{key}[{index}].args: {error}") from error
        name = term.type if term.type not in modules else f"{term.type}_{index + 1}"
        modules[name], weights[name], types[name] = module, term.weight, term.type
    return WeightedLoss(modules, weights, types)


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
