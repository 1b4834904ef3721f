"""The training config's sections that name registered parts (the loss terms, the network, the
optimiser and its schedule) and the name tables their ``type`` fields accept.

Pydantic only, no torch: the builders (``losses.LOSSES``, ``models.MODELS``, ``optim.OPTIMIZERS``) key
their factories by these names, and a name outside a table, or a loss the task's mode cannot use, is
an error when the config loads, before any weights load or any job is queued.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common_blocks.config_io import listed

TASKS = ("segmentation", "classification")
# The networks' output modes: smp's segmentation modes and the image-level gate's.
# smp's names of its segmentation modes (segmentation_models_pytorch.losses), which its losses take
MULTILABEL_MODE = "multilabel"
BINARY_MODE = "binary"
MULTICLASS_MODE = "multiclass"
SEGMENTATION_MODES = (MULTILABEL_MODE, BINARY_MODE, MULTICLASS_MODE)
CLASSIFICATION_MODE = "classification"
MODES = (*SEGMENTATION_MODES, CLASSIFICATION_MODE)

# Each loss term and the modes it supports.
LOSS_MODES: dict[str, tuple[str, ...]] = {
    "bce": MODES,
    "soft_bce": MODES,
    "focal": MODES,
    "dice": SEGMENTATION_MODES,
    "lovasz": SEGMENTATION_MODES,
}
# Each network family and the task it serves.
MODEL_TASKS: dict[str, str] = {"FPN": "segmentation", "Unet": "segmentation", "Classifier": "classification"}
OPTIMIZER_NAMES = ("adam", "adamw", "radam")
# The config accepts exactly the registered names.
LossName = Literal[tuple(LOSS_MODES)]
ModelName = Literal[tuple(MODEL_TASKS)]
OptimizerName = Literal[OPTIMIZER_NAMES]

IMAGENET = "imagenet"
DEFAULT_ENCODER = "resnet34"


def _names_by_group(table: dict[str, Any], group_name: dict[Any, str]) -> str:
    """``table``'s names grouped by their value, each group followed by what ``group_name`` calls it."""
    groups: dict[Any, list[str]] = {}
    for name, value in table.items():
        groups.setdefault(value, []).append(name)
    return "; ".join(f"{listed(names)} ({group_name[value]})" for value, names in groups.items())


class LossTerm(BaseModel):
    """One term of the loss: ``type`` is a name of ``LOSS_MODES`` (built by ``losses.LOSSES``), ``args`` go to
    the loss class."""

    model_config = ConfigDict(extra="forbid")

    type: LossName = Field(
        description=_names_by_group(LOSS_MODES, {MODES: "every task", SEGMENTATION_MODES: "segmentation"})
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


class ModelConfig(BaseModel):
    """A network: ``type`` is a name of ``MODEL_TASKS`` (built by ``models.MODELS``), ``args`` go to its
    factory."""

    model_config = ConfigDict(extra="forbid")

    type: ModelName = Field(
        description=_names_by_group(
            MODEL_TASKS, {"segmentation": "smp, segmentation", "classification": "timm, the gate"}
        )
    )
    args: dict[str, Any] = Field(
        {},
        description="keyword arguments of the network, passed to smp/timm; names are checked against the class",
        # the arguments the pipeline itself reads or relies on (docs/config.md lists them)
        json_schema_extra={
            "documented_args": {
                "encoder_name": {
                    "default": DEFAULT_ENCODER,
                    "description": "any smp encoder, a `tu-` timm encoder, or a timm model for the Classifier",
                },
                "encoder_weights": {
                    "default": IMAGENET,
                    "description": "`imagenet` (downloads from the hub), null, `package:DIST` (an installed "
                    "package that ships weights, offline), or a local `.pth`/`.pt`/`.bin`/`.safetensors` file in "
                    'the encoder\'s own layout or another known one (see "Pretrained weights offline" in '
                    "[commands.md](commands.md))",
                },
                "in_channels": {
                    "default": 3,
                    "description": "input channels; `data.grayscale: true` sets 1",
                },
                "decoder_channels": {
                    "default": [256, 128, 64, 32, 16],
                    "description": "Unet: the channels of its five decoder stages (the last ones run at the "
                    "model's full resolution; `[64, 32, 16, 16, 8]` trained `cpu_small` 1.3x faster and lost "
                    "classes 1-2, docs/results/training-speed.md)",
                },
                "decoder_attention_type": {
                    "default": None,
                    "description": "`scse` (Unet only; smp's FPN has none)",
                },
                "dropout": {"default": 0.0, "description": "Classifier only: dropout before its head"},
            }
        },
    )


class OptimizerConfig(BaseModel):
    """``type`` is a name of ``OPTIMIZER_NAMES`` (``optim.OPTIMIZERS``); the decoder is everything that is
    not the encoder."""

    model_config = ConfigDict(extra="forbid")

    type: OptimizerName = Field("adam", description=listed(OPTIMIZER_NAMES))
    encoder_lr: float = Field(
        1e-4, gt=0, description="learning rate of the encoder (classifier: the backbone)"
    )
    decoder_lr: float = Field(1e-3, gt=0, description="learning rate of the decoder (classifier: the head)")
    weight_decay: float = Field(0.0, ge=0, description="the optimiser's weight decay")
    freeze_encoder_epochs: int = Field(
        0,
        ge=0,
        description="the encoder's weights stay fixed (its batch norm learns) for the first N epochs, so a "
        "pretrained or earlier-stage encoder is not disturbed while the new decoder is random (8th place); "
        "with DDP set `trainer.find_unused_parameters: true`",
    )


class SchedulerConfig(BaseModel):
    """Epoch-wise schedule: ``plateau`` on the validation score, ``cosine`` (with optional linear warmup) or ``none``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["plateau", "cosine", "none"] = Field(
        "plateau", description="`plateau` (on the score `trainer.monitor` names), `cosine`, `none`"
    )
    warmup_epochs: int = Field(
        0,
        ge=0,
        description="cosine only: linear warm-up from 1/(N+1) of each rate over N epochs (torch's `LinearLR` "
        "then `CosineAnnealingLR` in a `SequentialLR`)",
    )
    patience: int = Field(2, ge=0, description="plateau: epochs without improvement before the rates drop")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: the factor the rates are multiplied by")
    min_lr: float = Field(
        1e-6,
        ge=0,
        description="the plateau floor and the cosine end (must be below both learning rates for cosine)",
    )

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> SchedulerConfig:
        if self.warmup_epochs and self.type != "cosine":
            raise ValueError(f"warmup_epochs works only with type 'cosine', not '{self.type}'")
        return self
