"""Optimizer with separate encoder / decoder learning rates, and the epoch-wise LR schedule.

A pretrained encoder is fine-tuned with a smaller learning rate than the freshly initialised decoder
(segmentation) or classifier layer (image-level gate), hence two parameter groups.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, ReduceLROnPlateau, SequentialLR

from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import OptimizerConfig, OptimizerName, SchedulerConfig

# Each optimiser of ``config_sections.OPTIMIZER_NAMES``: its torch class.
OPTIMIZERS: dict[OptimizerName, type[Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "radam": torch.optim.RAdam,
}


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


def build_scheduler(
    optimizer: Optimizer, cfg: SchedulerConfig, max_epochs: int, monitor: str
) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` dict stepped each epoch, or None for ``type: none``.

    ``plateau`` lowers the learning rates when ``monitor`` (maximised) stops improving; ``cosine``
    anneals every group from its own rate to ``min_lr`` after ``warmup_epochs`` of linear warm-up.
    """
    if cfg.type == "none":
        return None
    if cfg.type == "plateau":
        scheduler = ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
        )
        return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}
    if cfg.warmup_epochs >= max_epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs: {cfg.warmup_epochs} leaves no epoch of the {max_epochs} for the cosine decay"
        )
    lowest = min(group["lr"] for group in optimizer.param_groups)
    if cfg.min_lr >= lowest:
        raise ConfigError(
            f"scheduler.min_lr: {cfg.min_lr:g} is not below the lowest learning rate {lowest:g}"
        )
    cosine = CosineAnnealingLR(optimizer, T_max=max_epochs - cfg.warmup_epochs, eta_min=cfg.min_lr)
    if cfg.warmup_epochs == 0:
        return {"scheduler": cosine, "interval": "epoch"}
    warmup = LinearLR(optimizer, start_factor=1 / (cfg.warmup_epochs + 1), total_iters=cfg.warmup_epochs)
    scheduler = SequentialLR(optimizer, [warmup, cosine], milestones=[cfg.warmup_epochs])
    return {"scheduler": scheduler, "interval": "epoch"}
