"""One fold of one model family: build the Trainer, fit, validate the best checkpoint; score a checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.profilers import Profiler
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from common_blocks.backend_names import LIGHTNING_PRECISIONS
from common_blocks.config_io import apply_overrides, validate_tree
from common_blocks.errors import ConfigError, PipelineError
from common_blocks.evaluation.metric import ScoreSummary
from common_blocks.files import atomic_output
from common_blocks.one_writer import one_writer
from common_blocks.run_folder import MONITORED, RUN_FOLDER_BUSY, RunPaths
from common_blocks.training.averaging import TopKWeights
from common_blocks.training.callbacks import (
    AtomicCheckpointIO,
    FreezeEncoder,
    ProgressBar,
    RunCSVLogger,
    SelfContainedRunFolder,
    Throughput,
)
from common_blocks.training.checkpoints import (
    ResumePoint,
    check_weights_fit,
    load_checkpoint,
    load_fitting_weights,
    read_weights,
)
from common_blocks.training.config import TrainConfig
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.folds_file import check_labels
from common_blocks.training.module import DefectModule
from common_blocks.training.precision import resolve_precision
from common_blocks.training.run_folder_transaction import SetAside, prepare_run_dir, run_folder_transaction

# Lightning's start-up chatter (accelerator availability, tips) says nothing a user acts on.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def resolve_devices(cfg: TrainConfig, devices: int) -> tuple[str, int]:
    """Accelerator and device count; asking for a GPU where none is visible is a ConfigError."""
    has_gpu = torch.cuda.is_available()
    accelerator = cfg.trainer.accelerator
    if accelerator == "gpu" and not has_gpu:
        raise ConfigError("trainer.accelerator is 'gpu' but no CUDA device is visible; use 'auto' or 'cpu'")
    if cfg.trainer.precision == "fp16" and not has_gpu:
        raise ConfigError("trainer.precision 'fp16' needs a CUDA device; use 'fp32' or 'bf16' on CPU")
    if accelerator == "auto":
        accelerator = "gpu" if has_gpu else "cpu"
    if accelerator == "gpu" and devices > torch.cuda.device_count():
        raise ConfigError(f"--devices {devices} but only {torch.cuda.device_count()} GPU(s) are visible")
    return accelerator, devices


def _interruptible(trainer: L.Trainer, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``run`` (``trainer.fit``, ``trainer.validate``), with Ctrl-C raised as KeyboardInterrupt.

    Lightning catches KeyboardInterrupt itself, shuts down gracefully, ignores SIGINT from then on
    and calls ``sys.exit(1)``.
    """
    try:
        return run(*args, **kwargs)
    except SystemExit as exit_:
        if exit_.code == 1 and trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def build_trainer(
    cfg: TrainConfig,
    paths: RunPaths,
    accelerator: str,
    devices: int,
    extra_callbacks: Sequence[L.Callback] = (),
    *,
    resume_step: int | None = None,
    after_save: Callable[[dict[str, Any], Path], None] | None = None,
    num_nodes: int = 1,
    profiler: Profiler | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Trainer of a run; ``resume_step`` is the first logger step of a resumed run (its CSV log
    keeps the earlier rows), ``after_save(checkpoint, path)`` is called after each checkpoint;
    ``num_nodes`` > 1 is one DDP run across nodes (Lightning reads the ranks from SLURM);
    ``profiler`` times Lightning's actions (``benchmarks.profile_fold``)."""
    # best.ckpt by the monitored score; last.ckpt after every validation and, mid-epoch, every
    # checkpoint_every_n_steps training steps, so a killed run loses little.
    monitor = MONITORED[cfg.trainer.monitor]
    best = ModelCheckpoint(
        dirpath=paths.root,
        filename="best",
        monitor=monitor,
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
    if cfg.trainer.average_top_k is not None:
        reestimate = cfg.trainer.reestimate_batches if cfg.trainer.average_batch_norm == "reestimate" else 0
        callbacks.append(TopKWeights(paths, cfg.trainer.average_top_k, monitor, reestimate))
    if cfg.optimizer.freeze_encoder_epochs:
        callbacks.append(FreezeEncoder(cfg.optimizer.freeze_encoder_epochs))
    callbacks += [
        SelfContainedRunFolder(paths.root),
        Throughput(),
        ProgressBar(refresh_rate=1),
        *extra_callbacks,
    ]
    if cfg.trainer.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor, mode="max", patience=cfg.trainer.early_stopping_patience))
    loggers = [
        TensorBoardLogger(save_dir=paths.logs.parent, name=paths.logs.name, version="tensorboard"),
        RunCSVLogger(paths.logs.parent, paths.logs.name, paths.metrics.parent.name, resume_step),
    ]
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=DDPStrategy(find_unused_parameters=cfg.trainer.find_unused_parameters)
        if devices * num_nodes > 1
        else "auto",
        precision=LIGHTNING_PRECISIONS[cfg.trainer.precision],
        max_epochs=cfg.trainer.max_epochs,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        limit_train_batches=cfg.trainer.limit_train_batches,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=callbacks,
        logger=loggers,
        # Under SLURM the sweep's jobs requeue themselves (submitit); Lightning's own requeue stays off.
        plugins=[
            AtomicCheckpointIO(after_save),
            *([SLURMEnvironment(auto_requeue=False)] if _under_slurm() else []),
        ],
        default_root_dir=paths.root,
        use_distributed_sampler=False,  # the balanced sampler shards itself per rank
        num_sanity_val_steps=0,
        enable_model_summary=False,
        profiler=profiler,
        # Training crops and full validation images have fixed sizes: cuDNN picks the fastest
        # convolution algorithms once per shape. None leaves the setting alone off the GPU.
        benchmark=True if accelerator == "gpu" else None,
    )
    return trainer, best


def _under_slurm() -> bool:
    """Whether this process is a task of a SLURM job (Lightning's own test)."""
    return SLURMEnvironment.detect()


@contextmanager
def lightning_warnings_that_do_not_apply() -> Iterator[None]:
    """Silence Lightning warnings that are expected here and would only alarm the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        # The run folder holds this run's config.yaml and logs beside the checkpoints; earlier
        # checkpoints were refused or, with --overwrite, set aside by train_fold.
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # Lightning 2.6's own call of a torch API that torch 2.13 deprecates; nothing to act on.
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        yield


def epoch_warnings(cfg: TrainConfig) -> list[str]:
    """Settings counted in epochs that ``trainer.max_epochs`` leaves without effect: legal, rarely meant."""
    epochs, warnings_ = cfg.trainer.max_epochs, []
    if cfg.optimizer.freeze_encoder_epochs >= epochs:
        warnings_.append(
            f"optimizer.freeze_encoder_epochs {cfg.optimizer.freeze_encoder_epochs} >= trainer.max_epochs "
            f"{epochs}: the encoder stays frozen for the whole run"
        )
    if cfg.trainer.average_top_k is not None and cfg.trainer.average_top_k > epochs:
        warnings_.append(
            f"trainer.average_top_k {cfg.trainer.average_top_k} > trainer.max_epochs {epochs}: averaged.ckpt "
            f"averages all {epochs} validations"
        )
    return warnings_


def train_fold(
    cfg: TrainConfig,
    fold: int,
    out_dir: str | os.PathLike = "runs",
    devices: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    num_nodes: int = 1,
) -> dict:
    """Fit one fold and evaluate its best checkpoint on the fold (``num_nodes`` > 1: one DDP run
    across nodes, ``devices`` per node).

    Returns the summary also written to ``summary.json``. The run folder ``OUT_DIR/NAME/foldK/``:

    * ``resume``: ``last.ckpt`` is checked first (readable, of this pipeline, fits the config, fewer
      than ``trainer.max_epochs`` epochs trained): a refused resume changes nothing. The CSV log keeps
      the rows of the steps before the checkpoint and goes on after them.
    * a fresh run (``overwrite`` where checkpoints exist): the earlier run's files are set aside in
      ``RunPaths.previous_run`` and deleted once the new run writes its first checkpoint; if it fails or is
      interrupted before that, they are put back as they were.
    * Ctrl-C raises ``Interrupted`` naming the checkpoint to resume from.
    * Stale temporaries of killed writes are removed; paths restored from a checkpoint are taken to
      this folder, wherever it was copied or moved.
    * One writer: another process training into the folder is an error naming its pid, before
      anything is touched (``one_writer``; held until the summary is written).
    """
    accelerator, devices = resolve_devices(cfg, devices)
    precision, why = resolve_precision(cfg.trainer.precision, accelerator)
    if rank_zero_only.rank == 0:
        if why is not None:
            print(why, file=sys.stderr)
        for warning in epoch_warnings(cfg):
            print(f"warning: {warning}", file=sys.stderr)
    # The summary names the config as asked for (`auto` included), which a sweep compares with its own
    # to see the run finished; the run's config.yaml and its checkpoints record the precision it trained in.
    requested_digest = cfg.digest()
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"precision": precision})})
    paths = RunPaths.of(out_dir, cfg.name, fold)
    # The process that launches the others (DDP) owns the run folder; the others only read it.
    lead = rank_zero_only.rank == 0
    with one_writer(paths.root, RUN_FOLDER_BUSY) if lead else contextlib.nullcontext():
        return _train_fold(
            cfg,
            fold,
            out_dir,
            paths,
            lead,
            accelerator,
            devices,
            resume,
            overwrite,
            num_nodes,
            requested_digest,
        )


def _train_fold(
    cfg: TrainConfig,
    fold: int,
    out_dir: str | os.PathLike,
    paths: RunPaths,
    lead: bool,
    accelerator: str,
    devices: int,
    resume: bool,
    overwrite: bool,
    num_nodes: int,
    requested_digest: str,
) -> dict:
    """``train_fold`` once the run folder is this process's (``lead``) or only read (another DDP rank):
    everything checked, then fit and evaluate inside the run folder's transaction, then the summary."""
    if lead:
        SetAside(paths).recover()  # an earlier process killed between setting aside and its first checkpoint
    # The data first: a missing data folder or label file is its own one line, before the model fetches
    # any weights (offline, a minute of retries ending in an error about the weights).
    check_labels(cfg)
    datamodule = SteelDataModule(cfg, fold)
    point = prepare_run_dir(paths, resume, overwrite, cfg.trainer.max_epochs) if lead or resume else None
    module = _starting_module(cfg, fold, out_dir, point)
    with run_folder_transaction(paths, point, lead) as progress:
        if lead:
            with atomic_output(paths.config, "the run's config") as temporary:
                temporary.write_text(cfg.to_yaml())
        trainer, _ = build_trainer(
            cfg,
            paths,
            accelerator,
            devices,
            resume_step=None if point is None else point.first_logged_step,
            after_save=progress.checkpoint_written,
            num_nodes=num_nodes,
        )
        with lightning_warnings_that_do_not_apply():
            epochs = _fit(trainer, module, datamodule, point, cfg.trainer.max_epochs)
            progress.fitted = True
            scores = _evaluate(trainer, module, datamodule, paths)
    summary = _summary(cfg, fold, paths, epochs, len(datamodule.valid_table), scores, requested_digest)
    if trainer.is_global_zero:
        with atomic_output(paths.summary, "the run's summary") as temporary:
            temporary.write_text(json.dumps(summary, indent=2))
    return summary


def _starting_module(
    cfg: TrainConfig, fold: int, out_dir: str | os.PathLike, point: ResumePoint | None
) -> DefectModule:
    """The module the fit starts from, seeded: a resumed run's takes every weight from last.ckpt, a
    later stage's from the earlier stage's checkpoint (no pretrained encoder to fetch for either);
    weights that do not fit the config are an error before the run folder changes."""
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    init = cfg.init_checkpoint(out_dir, fold) if point is None else None
    module = DefectModule(cfg.model_dump(mode="json"), fold, pretrained=point is None and init is None)
    if point is not None:
        check_weights_fit(point, module)
    if init is not None:
        try:
            load_fitting_weights(init, read_weights(init), module, "cannot start from it")
        except PipelineError as error:
            raise PipelineError(f"init_from: {error}") from None
    return module


def _fit(
    trainer: L.Trainer,
    module: DefectModule,
    datamodule: SteelDataModule,
    point: ResumePoint | None,
    max_epochs: int,
) -> int:
    """Fit from ``point`` (None: from the start); the epochs trained. A run resumed after its fit was
    over (stopped before its summary) fits nothing."""
    if point is not None and point.epochs_done >= max_epochs:
        return point.epochs_done
    _interruptible(
        trainer, trainer.fit, module, datamodule=datamodule, ckpt_path=None if point is None else point.path
    )
    return trainer.current_epoch


def _evaluate(
    trainer: L.Trainer, module: DefectModule, datamodule: SteelDataModule, paths: RunPaths
) -> dict[Path, dict[str, Any]]:
    """The scores on the fold of the best checkpoint (``last.ckpt`` without one) and, when there is
    one, of ``averaged.ckpt``; the best first. Always this folder's files, never a path restored from
    a checkpoint."""
    best = paths.best if paths.best.is_file() else paths.last
    scores = {}
    for path in (best, paths.averaged):
        if path == best or path.is_file():
            _interruptible(
                trainer, trainer.validate, module, datamodule=datamodule, ckpt_path=path, verbose=False
            )
            scores[path] = {**module.last_summary.to_dict(), "tuned_score": module.last_tuned_score}
    return scores


def _summary(
    cfg: TrainConfig,
    fold: int,
    paths: RunPaths,
    epochs: int,
    n_valid: int,
    scores: dict[Path, dict],
    requested_digest: str,
) -> dict:
    """``summary.json``: the run (its config's digest as asked for, ``auto`` precision unresolved), the
    best checkpoint's scores, and the averaged one's when it exists."""
    best, best_scores = next(iter(scores.items()))
    summary = {
        "name": cfg.name,
        "fold": fold,
        "config_digest": requested_digest,
        "best_checkpoint": str(best.absolute()),
        "epochs": epochs,
        "n_valid_images": n_valid,
        **best_scores,
    }
    if paths.averaged in scores:
        summary["averaged"] = {"checkpoint": str(paths.averaged.absolute()), **scores[paths.averaged]}
    return summary


def evaluate_checkpoint(checkpoint: str | os.PathLike, overrides: Sequence[str] = ()) -> ScoreSummary:
    """The validation score of a checkpoint on its own fold, in this single process; ``overrides``
    (``key.path=value``) change its saved config for this evaluation (``data.data_dir``, say)."""
    module = load_checkpoint(checkpoint, kind=DefectModule)
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
