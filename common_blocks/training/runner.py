"""One fold of one model family: build the Trainer, fit, validate the best checkpoint; score a checkpoint."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from common_blocks.config_io import apply_overrides, validate_tree
from common_blocks.errors import ConfigError, PipelineError
from common_blocks.evaluation.metric import ScoreSummary
from common_blocks.files import atomic_output
from common_blocks.run_folder import VAL_SCORE, RunPaths
from common_blocks.training.callbacks import AtomicCheckpointIO, ProgressBar, Throughput
from common_blocks.training.checkpoints import load_checkpoint
from common_blocks.training.config import TrainConfig
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule

# Lightning's start-up chatter (accelerator availability, tips) says nothing a user acts on.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def resolve_devices(cfg: TrainConfig, devices: int) -> tuple[str, int]:
    """Accelerator and device count; asking for a GPU where none is visible is a ConfigError."""
    has_gpu = torch.cuda.is_available()
    accelerator = cfg.trainer.accelerator
    if accelerator == "gpu" and not has_gpu:
        raise ConfigError("trainer.accelerator is 'gpu' but no CUDA device is visible; use 'auto' or 'cpu'")
    if cfg.trainer.precision == "16-mixed" and not has_gpu:
        raise ConfigError("trainer.precision '16-mixed' needs a CUDA device; use '32' or 'bf16-mixed' on CPU")
    if accelerator == "auto":
        accelerator = "gpu" if has_gpu else "cpu"
    if accelerator == "gpu" and devices > torch.cuda.device_count():
        raise ConfigError(f"--devices {devices} but only {torch.cuda.device_count()} GPU(s) are visible")
    return accelerator, devices


def prepare_run_dir(paths: RunPaths, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, if any; never silently reuses or discards earlier work."""
    if resume:
        if not paths.last.is_file():
            raise PipelineError(f"--resume: no {paths.last} to resume from")
        return paths.last
    if paths.last.exists() or paths.best.exists():
        if not overwrite:
            raise PipelineError(
                f"{paths.root} already has checkpoints; pass --resume to continue or --overwrite to start over"
            )
        for stale in (paths.last, paths.best, paths.summary):
            stale.unlink(missing_ok=True)
    return None


def build_trainer(
    cfg: TrainConfig,
    paths: RunPaths,
    accelerator: str,
    devices: int,
    extra_callbacks: Sequence[L.Callback] = (),
) -> tuple[L.Trainer, ModelCheckpoint]:
    # best.ckpt by the validation score; last.ckpt after every validation and, mid-epoch, every
    # checkpoint_every_n_steps training steps, so a killed run loses little.
    best = ModelCheckpoint(
        dirpath=paths.root,
        filename="best",
        monitor=VAL_SCORE,
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    callbacks: list[L.Callback] = [best]
    if cfg.trainer.checkpoint_every_n_steps is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=paths.root,
                filename="last",
                every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
                enable_version_counter=False,
            )
        )
    callbacks += [Throughput(), ProgressBar(refresh_rate=1), *extra_callbacks]
    if cfg.trainer.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(VAL_SCORE, mode="max", patience=cfg.trainer.early_stopping_patience))
    loggers = [
        TensorBoardLogger(save_dir=paths.logs.parent, name=paths.logs.name, version="tensorboard"),
        CSVLogger(save_dir=paths.logs.parent, name=paths.logs.name, version=paths.metrics.parent.name),
    ]
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=DDPStrategy(find_unused_parameters=cfg.trainer.find_unused_parameters)
        if devices > 1
        else "auto",
        precision=cfg.trainer.precision,
        max_epochs=cfg.trainer.max_epochs,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        limit_train_batches=cfg.trainer.limit_train_batches,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the balanced sampler shards itself per rank
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    return trainer, best


@contextmanager
def lightning_warnings_that_do_not_apply() -> Iterator[None]:
    """Silence Lightning warnings that are expected here and would only alarm the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        # The run folder holds this run's config.yaml and logs beside the checkpoints; earlier
        # checkpoints were refused or, with --overwrite, removed by prepare_run_dir.
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # Lightning 2.6's own call of a torch API that torch 2.13 deprecates; nothing to act on.
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        yield


def train_fold(
    cfg: TrainConfig,
    fold: int,
    out_dir: str | os.PathLike = "runs",
    devices: int = 1,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Fit one fold and evaluate its best checkpoint on the fold.

    Returns the summary also written to ``summary.json``.
    """
    accelerator, devices = resolve_devices(cfg, devices)
    paths = RunPaths.of(out_dir, cfg.name, fold)
    datamodule = SteelDataModule(cfg, fold)
    resume_from = prepare_run_dir(paths, resume, overwrite)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    paths.root.mkdir(parents=True, exist_ok=True)
    with atomic_output(paths.config) as temporary:
        temporary.write_text(cfg.to_yaml())
    # A resumed run takes every weight from last.ckpt: no pretrained encoder to fetch.
    module = DefectModule(cfg.model_dump(mode="json"), fold, pretrained=resume_from is None)
    trainer, best = build_trainer(cfg, paths, accelerator, devices)
    with lightning_warnings_that_do_not_apply():
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        best_path = best.best_model_path or str(paths.last)
        trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
    summary = {
        "name": cfg.name,
        "fold": fold,
        "config_digest": cfg.digest(),
        "best_checkpoint": str(Path(best_path)),
        "epochs": trainer.current_epoch,
        "n_valid_images": len(datamodule.valid_table),
        **module.last_summary.to_dict(),
    }
    if trainer.is_global_zero:
        with atomic_output(paths.summary) as temporary:
            temporary.write_text(json.dumps(summary, indent=2))
    return summary


def evaluate_checkpoint(checkpoint: str | os.PathLike, overrides: Sequence[str] = ()) -> ScoreSummary:
    """The validation score of a checkpoint on its own fold, in this single process; ``overrides``
    (``key.path=value``) change its saved config for this evaluation (``data.data_dir``, say)."""
    module = load_checkpoint(checkpoint)
    tree = apply_overrides(module.cfg.model_dump(mode="json"), list(overrides))
    cfg = validate_tree(TrainConfig, tree, f"{checkpoint} with --set")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    with lightning_warnings_that_do_not_apply():
        trainer.validate(module, datamodule=SteelDataModule(cfg, module.fold), verbose=False)
    return module.last_summary
