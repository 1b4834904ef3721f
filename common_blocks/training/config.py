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
from pydantic import Field, field_validator, model_validator

from common_blocks.backend_names import LIGHTNING_PRECISIONS, PRECISIONS
from common_blocks.config_io import YAML_SUFFIXES, Section, config_name, listed, load_config_file
from common_blocks.data.augment_config import AugmentConfig
from common_blocks.data.formats import N_CLASSES
from common_blocks.evaluation.search_grid import DEFAULT_MIN_SIZES, DEFAULT_THRESHOLDS
from common_blocks.run_folder import RunPaths
from common_blocks.training.config_sections import (
    CLASSIFICATION_MODE,
    LOSS_MODES,
    MODEL_TASKS,
    SEGMENTATION_MODES,
    TASKS,
    LossTerm,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
)

ClassId = Annotated[int, Field(ge=1, le=N_CLASSES)]
MAX_RARE_FACTOR = 1000


class WeakConfig(Section):
    """Images with image-level labels only (which classes each holds, no masks): more training images
    for the classifier gate, never in a validation fold."""

    images: Path = Field(
        Path("weak_images"), description="folder of the images, relative to `data.data_dir` unless absolute"
    )
    labels: Path = Field(
        Path("weak_labels.csv"),
        description="`ImageId,ClassId`, a row per defect class an image holds (none: defect-free), "
        "relative to `data.data_dir` unless absolute",
    )


class DataConfig(Section):
    """Where the data is, how folds are made, and how batches are drawn."""

    data_dir: Path = Field(Path("data/severstal"), description="Kaggle layout folder")
    folds_file: Path = Field(
        Path("folds.csv"),
        description="relative to `data_dir`; `train.py` writes it when missing (stratified, `n_folds`, `fold_seed`)",
    )
    n_folds: int = Field(10, ge=2, description="number of folds of a missing folds file")
    test_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the images a missing folds file sets aside as the local test split (fold "
        "`test`), which no run trains, validates or tunes on",
    )
    fold_seed: int = Field(42, description="seed of a missing folds file's stratified split")
    grayscale: bool = Field(
        False, description="feed one grey channel (the model is built with `in_channels: 1`)"
    )
    scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="the model sees images resized by this factor; the training loss is taken at that size "
        "(masks area-averaged down), validation and inference activate the logits there and resize the "
        "probabilities to 256x1600 (with `average: logits`, inference resizes the averaged logits)",
    )
    batch_size: int = Field(8, ge=1, description="training batch size")
    valid_batch_size: int = Field(4, ge=1, description="validation batch size")
    num_workers: int = Field(2, ge=0, description="DataLoader workers")
    cache_images: bool = Field(
        False,
        description="keep every decoded image in memory after its first read (in each loader process), so "
        "later epochs skip JPEG decoding: about 0.4 MB per grey and 1.2 MB per colour image per process",
    )
    sampler: Literal["balanced", "random", "rare"] = Field(
        "balanced",
        description="`balanced` (equal shares of no-defect and has-class-c groups), `random`, or `rare` "
        "(draws with replacement, an image holding any of `data.rare_classes` `data.rare_factor` times as likely)",
    )
    rare_classes: tuple[ClassId, ...] = Field(
        (1, 2), min_length=1, description="`sampler: rare`: the classes whose images are drawn more often"
    )
    rare_factor: float = Field(
        3.0,
        gt=0,
        le=MAX_RARE_FACTOR,
        description="`sampler: rare`: how many times as likely an image holding one of them is "
        f"(at most {MAX_RARE_FACTOR}: beyond that the other images are as good as never drawn)",
    )
    samples_per_epoch: int | None = Field(
        None,
        ge=1,
        description="images drawn per epoch (`balanced`, `rare`; `random` on one process); null = the number "
        "of training images",
    )
    max_images: int | None = Field(
        None, ge=2, description="use only the first N labelled images (quick runs); null = all"
    )
    weak: WeakConfig | None = Field(
        None,
        description="`task: classification`: images with image-level labels (`{}` takes `weak_images/` and "
        "`weak_labels.csv`), added to the training images of every fold, never to a validation fold; "
        "null = none. A segmenter learns from them through `severstal pseudo --image-labels`",
    )

    def in_data_dir(self, path: Path) -> Path:
        """``path`` relative to ``data_dir`` unless absolute."""
        return Path(self.data_dir) / path


class TrainerConfig(Section):
    max_epochs: int = Field(30, ge=1, description="epochs to train")
    accelerator: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="`auto`, `cpu`, `gpu` (an error where no GPU is visible)"
    )
    precision: Literal[("auto", *PRECISIONS)] = Field(
        "auto",
        description="`auto` (`bf16` on a CPU with `avx512_bf16` or `amx_bf16` and on a GPU that supports "
        "bf16, `fp32` elsewhere; printed at the start, and the run's `config.yaml` and checkpoints record the "
        f"choice), {listed(PRECISIONS)} (`fp16` on a GPU only), as `--precision` names them; Lightning's "
        f"{listed(LIGHTNING_PRECISIONS.values())} (and `32` unquoted) are read as these",
    )
    accumulate_grad_batches: int = Field(
        1, ge=1, description="gradient accumulation: batches per optimiser step"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_in_our_words(cls, value: object) -> object:
        """Lightning's spellings, which earlier configs and checkpoints hold, as the command line's
        (``precision: 32`` unquoted is a number in YAML and ``--set``); only the integer: ``32.0`` is a
        float where an integer is meant, refused as everywhere else."""
        if type(value) is int and value == 32:
            return "fp32"
        lightning = {spelling: ours for ours, spelling in LIGHTNING_PRECISIONS.items()}
        return lightning.get(value, value) if isinstance(value, str) else value

    gradient_clip_val: float | None = Field(
        None, gt=0, description="clip the gradients' norm to this value; null = no clipping"
    )
    channels_last: bool = Field(True, description="channels-last memory format (10-30% faster on CPU)")
    compile: bool = Field(
        False,
        description="`torch.compile` the network for training and validation: faster steps after a compile "
        "that took minutes on 2 CPU cores (docs/results/training-speed.md: it did not pay back within a fold)",
    )
    find_unused_parameters: bool = Field(
        False, description="DDP: needed when a model has parameters outside the loss path"
    )
    monitor: Literal["score", "tuned_score"] = Field(
        "score",
        description="`score` (`val/score`, the fixed post-processing) or `tuned_score` (`val/tuned_score`, the "
        "post-processing searched on the fold: optimistic): picks `best.ckpt`, the top-K, drives the plateau "
        "schedule and early stopping",
    )
    average_top_k: int | None = Field(
        None,
        ge=2,
        description="K >= 2: write `averaged.ckpt`, the mean weights of the K best validations by the "
        "monitored score; null = none",
    )
    average_batch_norm: Literal["mean", "reestimate"] = Field(
        "mean",
        description="batch-norm statistics of `averaged.ckpt`: the `mean` of the K checkpoints', or "
        "`reestimate`d on `trainer.reestimate_batches` training batches with the averaged weights",
    )
    reestimate_batches: int = Field(
        20, ge=1, description="training batches that `average_batch_norm: reestimate` runs"
    )
    early_stopping_patience: int | None = Field(
        6, ge=1, description="validations without a better monitored score before training stops; null = off"
    )
    checkpoint_every_n_steps: int | None = Field(
        200, ge=1, description="refresh `last.ckpt` mid-epoch every N steps; null = at validation only"
    )
    limit_train_batches: int | float | None = Field(
        None, description="Lightning's limit (batches, or a fraction of them), for quick runs; null = all"
    )
    seed: int = Field(42, description="seed of the weights, the samplers and the augmentations")
    log_every_n_steps: int = Field(10, ge=1, description="Lightning's logging interval, in steps")


class ValidationConfig(Section):
    """Fixed, simple post-processing for the per-epoch validation score; ``tuned_score`` also logs
    the fold's score under the post-processing searched on it (the ``oof`` grid, the default minimum areas)."""

    threshold: float = Field(
        0.5, gt=0, lt=1, description="pixel threshold of the per-epoch score's fixed post-processing"
    )
    min_area: int = Field(
        0, ge=0, description="minimum mask area of the per-epoch score's fixed post-processing"
    )
    tuned_score: bool = Field(True, description="also log `val/tuned_score` (segmentation)")


class OofConfig(Section):
    """The grid the out-of-fold export makes exact for the threshold search."""

    thresholds: tuple[float, ...] = Field(
        DEFAULT_THRESHOLDS, description="pixel thresholds the OOF export makes exact"
    )
    min_sizes: tuple[int, ...] = Field(
        DEFAULT_MIN_SIZES, description="minimum component sizes of the OOF export"
    )
    fill_holes: bool = Field(False, description="fill mask holes before measuring")


class ClassHeadConfig(Section):
    """An image-level head on the segmenter's deepest encoder features (smp's ``aux_params``), trained
    jointly: its logits say which classes the image (or crop) holds, so the segmenter can be the
    ensemble's gate without a separate classifier (4th place's two-headed net)."""

    loss_weight: float = Field(0.2, gt=0, description="its BCE's weight beside the segmentation loss")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the head's linear layer")
    pooling: Literal["avg", "max"] = Field(
        "avg", description="`avg` or `max` pooling of the deepest features"
    )

    def network_args(self) -> dict[str, object]:
        """The head as ``models.build_model`` takes it: one logit per class."""
        return {"classes": N_CLASSES, "pooling": self.pooling, "dropout": self.dropout}


class PseudoConfig(Section):
    labels: Path | None = Field(
        None,
        description="pseudo-label CSV (`train.csv` format, optionally with an `Ignored` column) over the "
        "images of `pseudo.images` (set by `--pseudo`); null = none",
    )
    images: Path = Field(
        Path("test_images"),
        description="folder of the pseudo-labelled images, relative to `data.data_dir` unless absolute "
        "(`weak_images` for a round made with `severstal pseudo --images`)",
    )
    fraction: float = Field(
        0.3, ge=0, lt=1, description="share of every training batch drawn from pseudo-labels"
    )


class TrainConfig(Section):
    """Everything that defines one model family; one fold of it is one run of train.py."""

    name: str = Field(
        description="run name: outputs go to `OUT_DIR/name/foldK`",
        json_schema_extra={"shown_default": "file stem"},
    )
    task: Literal[TASKS] = Field("segmentation", description=f"{listed(TASKS)} (the image-level gate)")
    mode: Literal[SEGMENTATION_MODES] = Field(
        "multilabel",
        description="segmentation: `multilabel` (4 sigmoid channels), `binary` (one class-agnostic mask; the "
        "class comes from the gate), `multiclass` (softmax over background + 4; overlapping classes: the "
        "higher id wins)",
    )
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig
    class_head: ClassHeadConfig | None = Field(
        None,
        description="segmentation only: an image-level head on the deepest encoder features (smp "
        "`aux_params`, 4th place), trained jointly: the loss adds `loss_weight` x its BCE against the classes "
        "the (cropped) mask holds (`train/loss_class`, `val/loss_class`); the run can then be the ensemble's "
        "`gate`; null = none",
    )
    loss: list[LossTerm] = Field(
        default_factory=lambda: [LossTerm(type="bce"), LossTerm(type="dice")],
        description="list of terms, summed with their weights",
    )
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    trainer: TrainerConfig = TrainerConfig()
    validation: ValidationConfig = ValidationConfig()
    oof: OofConfig = OofConfig()
    pseudo: PseudoConfig = PseudoConfig()
    init_from: str | None = Field(
        None,
        description="staged training: start from a `.ckpt` (what `--init-from` sets) or from the same fold's "
        "`best.ckpt` of an earlier stage named by its config (`configs/NAME.yaml`, its run "
        "`OUT_DIR/NAME/foldK/best.ckpt`); same network (strict key match), fresh optimiser and schedule, no "
        "pretrained download; null = the pretrained encoder",
    )

    @property
    def task_mode(self) -> str:
        """The networks' output mode: ``mode`` for a segmenter, ``classification`` for the gate."""
        return CLASSIFICATION_MODE if self.task == "classification" else self.mode

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
        if MODEL_TASKS[self.model.type] != self.task:
            raise ValueError(
                f"model.type: {self.model.type} is a {MODEL_TASKS[self.model.type]} network, not one for "
                f"task '{self.task}'"
            )
        for index, term in enumerate(self.loss):
            if self.task_mode not in LOSS_MODES[term.type]:
                raise ValueError(
                    f"loss.{index}.type: loss '{term.type}' does not support mode '{self.task_mode}' (it "
                    f"supports {', '.join(LOSS_MODES[term.type])})"
                )
        if self.trainer.monitor == "tuned_score" and not (
            self.validation.tuned_score and self.task == "segmentation"
        ):
            raise ValueError(
                "trainer.monitor 'tuned_score' needs validation.tuned_score: true and a segmentation task"
            )
        if self.data.weak is not None and self.task != "classification":
            raise ValueError(
                "data.weak: image-level labels train the classifier gate (task: classification); a segmenter "
                "learns from them through pseudo-labels (severstal pseudo --images --image-labels)"
            )
        if self.data.weak is not None and (self.augment.crop_height or self.augment.crop_widths):
            raise ValueError(
                "data.weak: image-level labels describe the whole image, not a crop of it; set "
                "augment.crop_height and augment.crop_width to null (the gate trains on full images)"
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

    def trains_as(self, trained: TrainConfig) -> bool:
        """Whether a run trained with ``trained`` (its config.yaml, read by today's schema) is a run of
        this config. Unlike comparing digests, this survives upgrades: a key added since takes its
        default, an old spelling its new one. Paths compare resolved (relative ones against the current
        folder, as the run read them), and with ``precision: auto`` asked for, any precision the run
        resolved it to is this config's."""
        any_precision = self.trainer.precision == "auto"
        return _run_identity(self, any_precision) == _run_identity(trained, any_precision)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _run_identity(cfg: TrainConfig, any_precision: bool) -> dict:
    """``cfg`` as plain data with its paths resolved, and without its precision if ``any_precision``."""

    def plain(value: object) -> object:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return str(value.resolve()) if isinstance(value, Path) else value

    identity = plain(cfg.model_dump())
    if any_precision:
        del identity["trainer"]["precision"]
    return identity


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override and validate a training config; ``name`` defaults to the file's stem."""
    return load_config_file(TrainConfig, path, overrides)
