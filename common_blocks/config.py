"""The typed training config: one schema, validated at load, saved with every run and checkpoint.

A YAML file gives the values; ``--set key.path=value`` overrides any of them (the value is read as
YAML, so ``--set trainer.max_epochs=3`` is an int). An unknown key or a wrong type is a ConfigError
naming the key path.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common_blocks.errors import ConfigError
from common_blocks.losses import LossTerm
from common_blocks.models import ModelConfig
from common_blocks.oof_stats import DEFAULT_MIN_SIZES, DEFAULT_THRESHOLDS
from common_blocks.optim import OptimizerConfig, SchedulerConfig
from common_blocks.transforms import AugmentConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    sampler: Literal["balanced", "random"] = "balanced"
    samples_per_epoch: int | None = Field(None, ge=1)  # default: the number of training images
    max_images: int | None = Field(None, ge=2)  # use only the first N labelled images (debug runs)


class TrainerConfig(Section):
    max_epochs: int = Field(30, ge=1)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, gt=0)
    channels_last: bool = True
    find_unused_parameters: bool = False  # DDP: needed when a model has parameters outside the loss path
    early_stopping_patience: int | None = Field(6, ge=1)
    checkpoint_every_n_steps: int | None = Field(200, ge=1)  # refresh last.ckpt mid-epoch
    limit_train_batches: int | float | None = None  # Lightning's limit, for quick runs
    seed: int = 42
    log_every_n_steps: int = Field(10, ge=1)


class ValidationConfig(Section):
    """Fixed, simple post-processing for the per-epoch validation score."""

    threshold: float = Field(0.5, gt=0, lt=1)
    min_area: int = Field(0, ge=0)


class OofConfig(Section):
    """The grid the out-of-fold export makes exact for the threshold search."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    fill_holes: bool = False


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
    loss: list[LossTerm] = Field(default_factory=lambda: [LossTerm(type="bce"), LossTerm(type="dice")])
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    trainer: TrainerConfig = TrainerConfig()
    validation: ValidationConfig = ValidationConfig()
    oof: OofConfig = OofConfig()
    pseudo: PseudoConfig = PseudoConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if not self.loss:
            raise ValueError("loss needs at least one term")
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


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{source}: {'.'.join(keys[: depth + 1])} is not a section, cannot set {dotted}"
            )
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values read as YAML) to a raw config tree."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected key.path=value")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {override!r}: the value is not valid YAML") from None
        _set_path(tree, key.strip(), value, f"--set {override}")
    return tree


def _first_error(error: ValidationError, source: str) -> ConfigError:
    issue = error.errors()[0]
    path = ".".join(str(part) for part in issue["loc"]) or "(top level)"
    if issue["type"] == "extra_forbidden":
        return ConfigError(f"{source}: unknown key {path}")
    if issue["type"] == "missing":
        return ConfigError(f"{source}: missing key {path}")
    shown = issue.get("input")
    return ConfigError(f"{source}: {path}: {issue['msg']} (got {shown!r})")


def validate_config(tree: dict[str, Any], source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise _first_error(error, source) from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return tree


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override and validate a training config; ``name`` defaults to the file's stem."""
    tree = read_yaml(path)
    tree.setdefault("name", Path(path).stem)
    apply_overrides(tree, overrides or [])
    return validate_config(tree, str(path))
