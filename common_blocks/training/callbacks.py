"""Side effects of training, as Lightning callbacks and plugins: atomic checkpoints, throughput, the bar."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from common_blocks.files import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a crash never leaves a truncated
    ``last.ckpt`` or ``best.ckpt`` behind, only the previous complete one.

    Kept beside Lightning's ``TorchCheckpointIO`` because that one writes the target file in place.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_output(path) as temporary:
            torch.save(checkpoint, temporary)


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
