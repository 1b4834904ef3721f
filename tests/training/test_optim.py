"""Encoder / decoder parameter groups and the epoch-wise learning-rate schedules."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import (
    MODEL_TASKS,
    OPTIMIZER_NAMES,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
)
from common_blocks.training.models import MODELS, build_model
from common_blocks.training.optim import (
    OPTIMIZERS,
    build_optimizer,
    build_scheduler,
    split_parameters,
)


def test_every_named_optimizer_and_network_has_its_builder():
    assert list(OPTIMIZERS) == list(OPTIMIZER_NAMES)
    assert list(MODELS) == list(MODEL_TASKS)


class EncoderDecoder(nn.Module):
    """The smp layout in miniature: an ``encoder`` and everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.decoder = nn.Linear(4, 2)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


def test_groups_carry_their_learning_rates_and_weight_decay() -> None:
    model = EncoderDecoder()
    cfg = OptimizerConfig(type="adamw", encoder_lr=1e-4, decoder_lr=1e-3, weight_decay=0.01)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert learning_rates(optimizer) == {"encoder": 1e-4, "decoder": 1e-3}
    encoder_group, decoder_group = optimizer.param_groups
    assert encoder_group["params"] == list(model.encoder.parameters())
    assert decoder_group["params"] == list(model.decoder.parameters())
    assert all(group["weight_decay"] == 0.01 for group in optimizer.param_groups)


def test_classifier_decoder_group_is_the_final_layer() -> None:
    model = build_model(
        ModelConfig(type="Classifier", args={"encoder_name": "resnet18", "encoder_weights": None}), 4
    )
    encoder, decoder = split_parameters(model)
    assert decoder == list(model.get_classifier().parameters())
    assert len(encoder) + len(decoder) == len(list(model.parameters()))


def test_model_without_encoder_is_rejected() -> None:
    with pytest.raises(TypeError, match="Sequential"):
        split_parameters(nn.Sequential(nn.Linear(2, 2)))


def _schedule(optimizer, lr_scheduler, epochs):
    seen = []
    for _ in range(epochs):
        seen.append(learning_rates(optimizer))
        optimizer.step()
        lr_scheduler["scheduler"].step()
    return seen


def test_warmup_then_cosine_per_group() -> None:
    """Two warm-up epochs at 1/3 and 2/3 of each group's rate, then the cosine over the 4 epochs left:
    the full rate, the midpoint between rate and floor at half-way, and near the floor at the end."""
    optimizer = build_optimizer(EncoderDecoder(), OptimizerConfig(encoder_lr=1e-4, decoder_lr=1e-3))
    cfg = SchedulerConfig(type="cosine", warmup_epochs=2, min_lr=1e-6)
    lr_scheduler = build_scheduler(optimizer, cfg, max_epochs=6, monitor="val/score")
    assert lr_scheduler["interval"] == "epoch" and "monitor" not in lr_scheduler
    seen = _schedule(optimizer, lr_scheduler, 6)
    for name, base in (("encoder", 1e-4), ("decoder", 1e-3)):
        rates = [epoch[name] for epoch in seen]
        middle = (base + 1e-6) / 2
        step_down = 1e-6 + (base - 1e-6) * (1 + 0.5**0.5) / 2  # cos(pi/4) one epoch into the decay
        assert rates == pytest.approx(
            [base / 3, 2 * base / 3, base, step_down, middle, base + 1e-6 - step_down]
        )


def test_cosine_without_warmup_starts_at_the_full_rate() -> None:
    optimizer = build_optimizer(EncoderDecoder(), OptimizerConfig(encoder_lr=1e-4, decoder_lr=1e-3))
    lr_scheduler = build_scheduler(optimizer, SchedulerConfig(type="cosine", min_lr=0.0), 2, "val/score")
    assert [epoch["decoder"] for epoch in _schedule(optimizer, lr_scheduler, 3)] == pytest.approx(
        [1e-3, 5e-4, 0.0]
    )


def test_cosine_floor_must_lie_below_every_rate() -> None:
    optimizer = build_optimizer(EncoderDecoder(), OptimizerConfig(encoder_lr=1e-4, decoder_lr=1e-3))
    with pytest.raises(ConfigError, match=r"scheduler\.min_lr"):
        build_scheduler(optimizer, SchedulerConfig(type="cosine", min_lr=1e-4), 5, "val/score")


def test_cosine_needs_an_epoch_after_warmup() -> None:
    optimizer = build_optimizer(EncoderDecoder(), OptimizerConfig())
    with pytest.raises(ConfigError, match=r"scheduler\.warmup_epochs"):
        build_scheduler(
            optimizer, SchedulerConfig(type="cosine", warmup_epochs=3), max_epochs=3, monitor="val/score"
        )


def test_plateau_maximises_the_validation_score() -> None:
    optimizer = build_optimizer(EncoderDecoder(), OptimizerConfig(encoder_lr=1e-4, decoder_lr=1e-3))
    lr_scheduler = build_scheduler(
        optimizer, SchedulerConfig(patience=1, factor=0.5), max_epochs=10, monitor="val/score"
    )
    assert lr_scheduler["monitor"] == "val/score" and lr_scheduler["interval"] == "epoch"
    scheduler = lr_scheduler["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.mode == "max"
    for score in (0.5, 0.6, 0.6):
        scheduler.step(score)
    assert learning_rates(optimizer) == {"encoder": 1e-4, "decoder": 1e-3}
    scheduler.step(0.6)
    assert learning_rates(optimizer) == pytest.approx({"encoder": 5e-5, "decoder": 5e-4})


def test_no_scheduler() -> None:
    optimizer = build_optimizer(EncoderDecoder(), OptimizerConfig())
    assert (
        build_scheduler(optimizer, SchedulerConfig(type="none"), max_epochs=10, monitor="val/score") is None
    )


def test_warmup_is_only_for_cosine() -> None:
    with pytest.raises(ValidationError, match="warmup_epochs works only with type 'cosine'"):
        SchedulerConfig(type="plateau", warmup_epochs=1)
