"""Side effects of training, as Lightning callbacks, plugins and loggers: atomic checkpoints, a run
folder that stays self-contained, a CSV log that keeps its history across resumes, throughput, the bar."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from common_blocks.files import atomic_output
from common_blocks.training.optim import split_parameters


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a crash never leaves a truncated
    ``last.ckpt`` or ``best.ckpt`` behind, only the previous complete one. ``after_save(checkpoint,
    path)`` is called once the file is in place.

    Kept beside Lightning's ``TorchCheckpointIO`` because that one writes the target file in place.
    """

    def __init__(self, after_save: Callable[[dict[str, Any], Path], None] | None = None) -> None:
        super().__init__()
        self.after_save = after_save

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_output(path, "a checkpoint") as temporary:
            torch.save(checkpoint, temporary)
        if self.after_save is not None:
            self.after_save(checkpoint, Path(path))


def relocate_checkpoint_state(state: dict[str, Any], root: str) -> None:
    """Point a ModelCheckpoint state's paths into the folder ``root`` (in place).

    Lightning restores the absolute ``best_model_path`` (and, in the same folder, the last and
    top-k paths) saved in ``last.ckpt``: in a run folder copied or moved elsewhere they would name
    the files of the original folder, which would then be validated, summarised or even replaced.
    Only paths that lay in the saved ``dirpath`` move; the file names stay.
    """
    old = state.get("dirpath")
    if not isinstance(old, str) or old == root:
        return

    def moved(path: Any) -> Any:
        if isinstance(path, str) and path and os.path.dirname(path) == old:
            return os.path.join(root, os.path.basename(path))
        return path

    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = moved(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {moved(path): score for path, score in state["best_k_models"].items()}
    state["dirpath"] = root


class SelfContainedRunFolder(L.Callback):
    """On resume, the checkpoint callbacks' restored paths name files of this run folder, wherever
    the folder was copied or moved since ``last.ckpt`` was written (see
    ``relocate_checkpoint_state``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.realpath(root)  # ModelCheckpoint keeps its dirpath resolved the same way

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for state in (checkpoint.get("callbacks") or {}).values():
            if isinstance(state, dict) and "dirpath" in state:
                relocate_checkpoint_state(state, self.root)


def _row_key(row: dict[str, Any]) -> tuple[Any, Any, frozenset[str]]:
    """What identifies a logged row: its epoch, its step and which metrics it holds."""

    def number(value: Any) -> int | None:
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None

    metrics = frozenset(
        key for key, value in row.items() if key not in ("epoch", "step") and value not in ("", None)
    )
    return number(row.get("epoch")), number(row.get("step")), metrics


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer (which deletes ``metrics.csv`` when it starts), made to keep a resumed
    run's history: the rows of the steps before ``resume_step`` stay, the resumed run's rows follow,
    and an earlier row that the resumed run logs again (same epoch, step and metrics, e.g. the
    validation of an epoch whose last batch the checkpoint was written after) is replaced. A fresh
    run (``resume_step`` None) replaces the file with its first rows. The file is rewritten through a
    temporary, so a crash leaves the previous complete version.
    """

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self._resume_step = resume_step
        self._earlier: list[dict[str, Any]] = []
        self._earlier_keys: set[tuple[Any, Any, frozenset[str]]] = set()
        self._started = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv: read it instead
        if self._resume_step is None or not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            header = [name for name in reader.fieldnames or [] if name]
        for row in rows:
            row.pop(None, None)  # surplus fields of a damaged line
            step = _row_key(row)[1]
            if step is None or step < self._resume_step:
                self._earlier.append(row)
        self._earlier_keys = {_row_key(row) for row in self._earlier}
        self.metrics_keys = sorted(header)

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        repeated = {_row_key(row) for row in self.metrics} & self._earlier_keys
        if not self._started or new_keys or repeated:
            rows = self._read() if self._started else self._earlier
            if repeated:
                rows = [row for row in rows if _row_key(row) not in repeated]
                self._earlier_keys -= repeated
            self._write([*rows, *self.metrics])
            self._started = True
            self._earlier = []
        else:
            with open(self.metrics_file_path, "a", newline="") as file:
                self._writer(file).writerows(self.metrics)
        self.metrics = []

    def _read(self) -> list[dict[str, Any]]:
        with open(self.metrics_file_path, newline="") as file:
            return list(csv.DictReader(file))

    def _write(self, rows: Iterable[dict[str, Any]]) -> None:
        with (
            atomic_output(self.metrics_file_path, "the CSV log") as temporary,
            open(temporary, "w", newline="") as file,
        ):
            writer = self._writer(file)
            writer.writeheader()
            writer.writerows(rows)

    def _writer(self, file: Any) -> csv.DictWriter:
        return csv.DictWriter(file, fieldnames=self.metrics_keys, extrasaction="ignore")


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing ``logs/csv/metrics.csv`` with a resumed run's whole history (see
    ``_HistoryWriter``); ``resume_step`` is the first logger step the resumed run logs (None: a fresh
    run). Every row is flushed at once (Lightning's default is every 100 steps) and after every
    checkpoint: a killed run has on disk the rows that the resumed one will not log again."""

    def __init__(self, save_dir: str | os.PathLike, name: str, version: str, resume_step: int | None) -> None:
        super().__init__(save_dir, name=name, version=version, flush_logs_every_n_steps=1)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self._resume_step)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


class FreezeEncoder(L.Callback):
    """The encoder's weights stay fixed for the first ``epochs`` epochs, its batch-norm layers
    excepted (they keep learning, as in the 8th place's progressive stages); from then on everything
    trains. A frozen parameter gets no gradient, so the optimiser leaves it (and its state) alone.
    Under DDP set ``trainer.find_unused_parameters: true``: the frozen weights take no part in the loss."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        for parameter in frozen_encoder_parameters(pl_module.model):
            parameter.requires_grad_(not frozen)


def frozen_encoder_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The encoder parameters ``FreezeEncoder`` fixes: all but those of its batch-norm layers."""
    encoder, _ = split_parameters(model)
    norms = {
        id(parameter)
        for layer in model.modules()
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
        for parameter in layer.parameters()
    }
    return [parameter for parameter in encoder if id(parameter) not in norms]


class Throughput(L.Callback):
    """Training images per second in the progress bar (smoothed), beside the loss and the ETA.

    Kept beside Lightning's ``ThroughputMonitor``, which logs to the loggers only, never to the bar.
    """

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self.rate: float | None = None
        self._started = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._started == 0.0:
            self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        instant = batch["image"].shape[0] * trainer.world_size / max(now - self._started, 1e-9)
        self._started = now  # the next interval includes loading the next batch
        self.rate = (
            instant if self.rate is None else self.smoothing * self.rate + (1 - self.smoothing) * instant
        )
        pl_module.log("img_s", self.rate, prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = 0.0


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger version number, which means nothing to a user here."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A failed or interrupted run ends its bars: the message that follows gets a line of its own."""
        for bar in (self._train_progress_bar, self._val_progress_bar):
            if bar is not None:
                bar.close()
