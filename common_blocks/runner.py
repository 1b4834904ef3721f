"""One fold of one model family: build the Trainer, fit, then export out-of-fold predictions."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from common_blocks.callbacks import AtomicCheckpointIO, OofExport, ProgressBar, Throughput
from common_blocks.config import TrainConfig
from common_blocks.datamodule import SteelDataModule
from common_blocks.errors import ConfigError, PipelineError
from common_blocks.files import atomic_output
from common_blocks.lit_module import DefectModule
from common_blocks.metrics import ScoreSummary

MONITOR = "val/score"
# Lightning's start-up chatter (accelerator availability, tips) says nothing a user acts on.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class RunPaths:
    """Where one fold's outputs go: ``OUT_DIR/NAME/foldK/``."""

    root: Path

    @classmethod
    def of(cls, out_dir: str | os.PathLike, name: str, fold: int) -> RunPaths:
        return cls(Path(out_dir) / name / f"fold{fold}")

    @property
    def best(self) -> Path:
        return self.root / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.root / "last.ckpt"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def oof(self, classifier: bool) -> Path:
        return self.root / ("oof_gate.csv" if classifier else "oof.npz")


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
        for stale in (paths.last, paths.best, paths.summary, paths.oof(True), paths.oof(False)):
            stale.unlink(missing_ok=True)
    return None


def build_trainer(
    cfg: TrainConfig, paths: RunPaths, accelerator: str, devices: int, extra_callbacks: list[L.Callback]
) -> tuple[L.Trainer, ModelCheckpoint]:
    # best.ckpt by the validation score; last.ckpt after every validation and, mid-epoch, every
    # checkpoint_every_n_steps training steps, so a killed run loses little.
    best = ModelCheckpoint(
        dirpath=paths.root,
        filename="best",
        monitor=MONITOR,
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
        callbacks.append(EarlyStopping(MONITOR, mode="max", patience=cfg.trainer.early_stopping_patience))
    loggers = [
        TensorBoardLogger(save_dir=paths.root, name="logs", version="tensorboard"),
        CSVLogger(save_dir=paths.root, name="logs", version="csv"),
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
    """Fit one fold, evaluate its best checkpoint on the fold and export the OOF file.

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
    module = DefectModule(cfg.model_dump(mode="json"), fold)
    oof_export = OofExport(paths.oof(module.is_classifier), fold)
    trainer, best = build_trainer(cfg, paths, accelerator, devices, [oof_export])
    with lightning_warnings_that_do_not_apply():
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        best_path = best.best_model_path or str(paths.last)
        oof_export.enabled = True
        trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
    summary = {
        "name": cfg.name,
        "fold": fold,
        "config_digest": cfg.digest(),
        "best_checkpoint": str(Path(best_path)),
        "epochs": trainer.current_epoch,
        "n_valid_images": len(datamodule.valid_table),
        **module.last_summary.to_dict(),
        "oof": str(paths.oof(module.is_classifier)),
    }
    if trainer.is_global_zero:
        with atomic_output(paths.summary) as temporary:
            temporary.write_text(json.dumps(summary, indent=2))
    return summary


def load_checkpoint(checkpoint: str | os.PathLike) -> DefectModule:
    """A trained module from its checkpoint alone (the config travels inside it)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    return DefectModule.load_from_checkpoint(path, map_location="cpu")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> ScoreSummary:
    """The validation score of a checkpoint on its own fold, in this single process."""
    module = load_checkpoint(checkpoint)
    cfg = module.cfg
    if data_dir is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": Path(data_dir)})})
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
