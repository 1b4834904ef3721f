"""Optimizer with separate encoder / decoder learning rates, and the epoch-wise LR schedule.

A pretrained encoder is fine-tuned with a smaller learning rate than the freshly initialised decoder
(segmentation) or classifier layer (image-level gate), hence two parameter groups.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from common_blocks.errors import ConfigError

MONITORED_METRIC = "val/score"  # maximised

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "radam": torch.optim.RAdam,
}


class OptimizerConfig(BaseModel):
    """``type`` is a key of ``OPTIMIZERS``; the decoder is everything that is not the encoder."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["adam", "adamw", "radam"] = "adam"
    encoder_lr: float = Field(1e-4, gt=0)
    decoder_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class SchedulerConfig(BaseModel):
    """Epoch-wise schedule: ``plateau`` on ``val/score``, ``cosine`` (with optional linear warmup) or ``none``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["plateau", "cosine", "none"] = "plateau"
    warmup_epochs: int = Field(0, ge=0)
    patience: int = Field(2, ge=0)
    factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-6, ge=0)

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> SchedulerConfig:
        if self.warmup_epochs and self.type != "cosine":
            raise ValueError(f"warmup_epochs works only with type 'cosine', not '{self.type}'")
        return self


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(encoder, decoder)`` parameters: smp's ``model.encoder`` vs. the rest, or for a timm
    classifier the backbone vs. its ``get_classifier()`` layer. Every parameter lands in exactly one."""
    if isinstance(getattr(model, "encoder", None), nn.Module):
        encoder_ids = {id(parameter) for parameter in model.encoder.parameters()}
    elif callable(getattr(model, "get_classifier", None)):
        head_ids = {id(parameter) for parameter in model.get_classifier().parameters()}
        encoder_ids = {id(parameter) for parameter in model.parameters() if id(parameter) not in head_ids}
    else:
        raise TypeError(f"{type(model).__name__} has neither an 'encoder' nor a timm 'get_classifier()'")
    encoder, decoder = [], []
    for parameter in model.parameters():
        (encoder if id(parameter) in encoder_ids else decoder).append(parameter)
    return encoder, decoder


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> Optimizer:
    """``cfg.type`` over two named groups, ``encoder`` and ``decoder``, with their own learning rates."""
    encoder, decoder = split_parameters(model)
    groups = [
        {"params": encoder, "lr": cfg.encoder_lr, "name": "encoder"},
        {"params": decoder, "lr": cfg.decoder_lr, "name": "decoder"},
    ]
    return OPTIMIZERS[cfg.type](groups, weight_decay=cfg.weight_decay)


def _warmup_cosine_factor(
    epoch: int, base_lr: float, min_lr: float, warmup_epochs: int, max_epochs: int
) -> float:
    """LR multiplier: linear warmup to ``base_lr`` over ``warmup_epochs``, then cosine down to ``min_lr``."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    floor = min(min_lr, base_lr)
    progress = (epoch - warmup_epochs) / (max_epochs - warmup_epochs)
    lr = floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr / base_lr


def build_scheduler(optimizer: Optimizer, cfg: SchedulerConfig, max_epochs: int) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` dict stepped each epoch, or None for ``type: none``."""
    if cfg.type == "none":
        return None
    if cfg.type == "plateau":
        scheduler = ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
        )
        return {"scheduler": scheduler, "interval": "epoch", "monitor": MONITORED_METRIC}
    if cfg.warmup_epochs >= max_epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs: {cfg.warmup_epochs} leaves no epoch of the {max_epochs} for the cosine decay"
        )
    factors = [
        functools.partial(
            _warmup_cosine_factor,
            base_lr=group["lr"],
            min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs,
            max_epochs=max_epochs,
        )
        for group in optimizer.param_groups
    ]
    return {"scheduler": LambdaLR(optimizer, factors), "interval": "epoch"}
