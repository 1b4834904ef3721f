"""The typed training config: one schema, validated at load, saved with every run and checkpoint.

A YAML file gives the values; ``--set key.path=value`` overrides any of them (the value is read as
YAML, so ``--set trainer.max_epochs=3`` is an int). An unknown key or a wrong type is a ConfigError
naming the key path. Types are strict (``config_io.validate_strict``): ``true`` or ``8.0`` is not a
batch size, ``"0.001"`` is not a learning rate; a string is a path, a list a tuple, ``0`` a float.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, model_validator

from common_blocks.config_io import YAML_SUFFIXES, Section, config_name, load_config_file
from common_blocks.data.formats import N_CLASSES
from common_blocks.data.transforms import AugmentConfig
from common_blocks.evaluation.oof_stats import DEFAULT_MIN_SIZES, DEFAULT_THRESHOLDS
from common_blocks.run_folder import RunPaths
from common_blocks.training.losses import LossTerm
from common_blocks.training.models import ModelConfig
from common_blocks.training.optim import OptimizerConfig, SchedulerConfig

ClassId = Annotated[int, Field(ge=1, le=N_CLASSES)]


class DataConfig(Section):
    """Where the data is, how folds are made, and how batches are drawn."""

    data_dir: Path = Path("data/severstal")
    # A relative folds_file is under data_dir; it is written (stratified) when missing.
    folds_file: Path = Path("folds.csv")
    n_folds: int = Field(10, ge=2)
    fold_seed: int = 42
    grayscale: bool = False  # feed the model one grey channel instead of three
    scale: float = Field(1.0, gt=0, le=1)  # the model sees images resized by this factor
    batch_size: int = Field(8, ge=1)
    valid_batch_size: int = Field(4, ge=1)
    num_workers: int = Field(2, ge=0)
    sampler: Literal["balanced", "random", "rare"] = "balanced"
    # sampler rare: images holding any of these classes are drawn rare_factor times as often
    rare_classes: tuple[ClassId, ...] = Field((1, 2), min_length=1)
    rare_factor: float = Field(3.0, gt=0)
    samples_per_epoch: int | None = Field(None, ge=1)  # default: the number of training images
    max_images: int | None = Field(None, ge=2)  # use only the first N labelled images (debug runs)


class TrainerConfig(Section):
    max_epochs: int = Field(30, ge=1)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    # auto: bf16-mixed where the CPU or GPU computes bf16 natively, else 32 (training/precision.py)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, gt=0)
    channels_last: bool = True
    find_unused_parameters: bool = False  # DDP: needed when a model has parameters outside the loss path
    # What picks best.ckpt, drives the plateau schedule and early stopping: val/score (fixed
    # post-processing) or val/tuned_score (post-processing searched on the fold: optimistic)
    monitor: Literal["score", "tuned_score"] = "score"
    # Write averaged.ckpt: the mean weights of the K best validations by the monitored score
    average_top_k: int | None = Field(None, ge=2)
    # Batch-norm statistics of averaged.ckpt: the mean of the K checkpoints' statistics, or
    # re-estimated on that many training batches with the averaged weights
    average_batch_norm: Literal["mean", "reestimate"] = "mean"
    reestimate_batches: int = Field(20, ge=1)
    early_stopping_patience: int | None = Field(6, ge=1)
    checkpoint_every_n_steps: int | None = Field(200, ge=1)  # refresh last.ckpt mid-epoch
    limit_train_batches: int | float | None = None  # Lightning's limit, for quick runs
    seed: int = 42
    log_every_n_steps: int = Field(10, ge=1)


class ValidationConfig(Section):
    """Fixed, simple post-processing for the per-epoch validation score; ``tuned_score`` also logs
    the fold's score under the post-processing searched on it (the ``oof`` grid, the default minimum areas)."""

    threshold: float = Field(0.5, gt=0, lt=1)
    min_area: int = Field(0, ge=0)
    tuned_score: bool = True


class OofConfig(Section):
    """The grid the out-of-fold export makes exact for the threshold search."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    fill_holes: bool = False


class ClassHeadConfig(Section):
    """An image-level head on the segmenter's deepest encoder features (smp's ``aux_params``), trained
    jointly: its logits say which classes the image (or crop) holds, so the segmenter can be the
    ensemble's gate without a separate classifier (4th place's two-headed net)."""

    loss_weight: float = Field(0.2, gt=0)  # its BCE's weight beside the segmentation loss
    dropout: float = Field(0.2, ge=0, lt=1)
    pooling: Literal["avg", "max"] = "avg"

    def network_args(self) -> dict[str, object]:
        """The head as ``models.build_model`` takes it: one logit per class."""
        return {"classes": N_CLASSES, "pooling": self.pooling, "dropout": self.dropout}


class PseudoConfig(Section):
    labels: Path | None = None  # pseudo-label CSV (train.csv format) over the test images; set by --pseudo
    fraction: float = Field(0.3, ge=0, lt=1)  # share of every training batch drawn from pseudo-labels


class TrainConfig(Section):
    """Everything that defines one model family; one fold of it is one run of train.py."""

    name: str
    task: Literal["segmentation", "classification"] = "segmentation"
    mode: Literal["multilabel", "binary", "multiclass"] = "multilabel"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig
    class_head: ClassHeadConfig | None = None  # segmentation only: also predict which classes are present
    loss: list[LossTerm] = Field(default_factory=lambda: [LossTerm(type="bce"), LossTerm(type="dice")])
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    trainer: TrainerConfig = TrainerConfig()
    validation: ValidationConfig = ValidationConfig()
    oof: OofConfig = OofConfig()
    pseudo: PseudoConfig = PseudoConfig()
    # Staged training: start from these weights instead of the pretrained encoder, with a fresh
    # optimiser and schedule: a .ckpt file, or the earlier stage's training config (configs/NAME.yaml),
    # whose run of the same fold gives its best.ckpt (OUT_DIR/NAME/foldK/best.ckpt).
    init_from: str | None = None

    @property
    def parent_stage(self) -> Path | None:
        """The earlier stage's training config, when ``init_from`` names one."""
        return Path(self.init_from) if self.init_from and self.init_from.endswith(YAML_SUFFIXES) else None

    def init_checkpoint(self, out_dir: str | os.PathLike, fold: int) -> Path | None:
        """The checkpoint ``init_from`` names for ``fold`` under the runs folder ``out_dir``."""
        if self.init_from is None:
            return None
        if self.parent_stage is None:
            return Path(self.init_from)
        return RunPaths.of(out_dir, config_name(self.parent_stage), fold).best

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if not self.loss:
            raise ValueError("loss needs at least one term")
        if self.trainer.monitor == "tuned_score" and not (
            self.validation.tuned_score and self.task == "segmentation"
        ):
            raise ValueError(
                "trainer.monitor 'tuned_score' needs validation.tuned_score: true and a segmentation task"
            )
        if self.class_head is not None and self.task != "segmentation":
            raise ValueError("class_head: a head on a segmenter; a classifier already is one")
        if self.augment.crop_widths and self.pseudo.labels is not None:
            raise ValueError(
                "augment.crop_widths (multi-scale crops) does not combine with pseudo-labels yet"
            )
        if self.init_from is not None:
            if not self.init_from.endswith((".ckpt", *YAML_SUFFIXES)):
                raise ValueError(
                    f"init_from: expected a .ckpt file or configs/NAME.yaml, got {self.init_from!r}"
                )
            if self.parent_stage is not None:
                if not self.parent_stage.is_file():
                    raise ValueError(f"init_from: {self.init_from}: config file not found")
                if config_name(self.parent_stage) == self.name:
                    raise ValueError(
                        f"init_from: {self.init_from} trains this run itself, not an earlier stage"
                    )
        if "class_head" in self.model.args:
            raise ValueError(
                "model.args.class_head: the class head is the pipeline's own key; set it at the top level "
                "(class_head: {loss_weight: 0.2}), not among the network's arguments"
            )
        if self.data.grayscale and self.model.args.get("in_channels", 1) != 1:
            raise ValueError("data.grayscale feeds one channel: model.args.in_channels must be 1 or unset")
        return self

    def model_for_input(self) -> ModelConfig:
        """The model section with ``in_channels`` matching what the data feeds it."""
        if not self.data.grayscale:
            return self.model
        return self.model.model_copy(update={"args": {**self.model.args, "in_channels": 1}})

    def digest(self) -> str:
        """Short hash of the resolved config, to tell runs apart."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override and validate a training config; ``name`` defaults to the file's stem."""
    return load_config_file(TrainConfig, path, overrides)
