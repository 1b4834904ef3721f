"""Side effects of training, as Lightning callbacks and plugins: throughput, checkpoints, OOF export."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from common_blocks.files import atomic_output
from common_blocks.formats import CLASS_IDS
from common_blocks.oof_stats import OofStats, OofStatsBuilder

GATE_COLUMNS = tuple(f"p{class_id}" for class_id in CLASS_IDS)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a crash never leaves a truncated
    ``last.ckpt`` or ``best.ckpt`` behind, only the previous complete one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_output(path) as temporary:
            torch.save(checkpoint, temporary)


class Throughput(L.Callback):
    """Training images per second in the progress bar (smoothed), beside the loss and the ETA."""

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


class OofExport(L.Callback):
    """During one validation pass, record what the threshold search needs for every validation image.

    Segmentation: per-image area / intersection statistics over the OOF grid (``oof.npz``, see
    ``oof_stats``). Classifier: the four gate probabilities (``oof_gate.csv``). Each rank writes its
    part; rank 0 merges them once every rank is done, so each image appears exactly once under DDP.
    """

    def __init__(self, out_path: Path, fold: int) -> None:
        self.out_path = Path(out_path)
        self.fold = fold
        self.enabled = False
        self._builder: OofStatsBuilder | None = None
        self._gate_rows: list[pd.DataFrame] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        oof = pl_module.cfg.oof
        self._builder = OofStatsBuilder(oof.thresholds, oof.min_sizes, (oof.fill_holes,) * len(CLASS_IDS))
        self._gate_rows = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.enabled:
            return
        probs = outputs["probs"].cpu().numpy()
        if pl_module.is_classifier:
            frame = pd.DataFrame(probs, columns=list(GATE_COLUMNS))
            frame.insert(0, "ImageId", list(batch["image_id"]))
            self._gate_rows.append(frame)
        else:
            truth = batch["mask"].cpu().numpy()  # uint8 from the dataset
            self._builder.add(list(batch["image_id"]), probs, truth, folds=self.fold)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        part = self.out_path.with_name(
            f"{self.out_path.stem}.rank{trainer.global_rank}{self.out_path.suffix}"
        )
        if pl_module.is_classifier:
            rows = (
                pd.concat(self._gate_rows)
                if self._gate_rows
                else pd.DataFrame(columns=["ImageId", *GATE_COLUMNS])
            )
            with atomic_output(part) as temporary:
                rows.assign(fold=self.fold).to_csv(temporary, index=False)
        else:
            self._builder.build().save(part)
        trainer.strategy.barrier("oof-export")
        if trainer.is_global_zero:
            parts = [
                self.out_path.with_name(f"{self.out_path.stem}.rank{r}{self.out_path.suffix}")
                for r in range(trainer.world_size)
            ]
            merge_parts(parts, self.out_path, pl_module.is_classifier)
        trainer.strategy.barrier("oof-merged")
        self.enabled = False


def merge_parts(parts: list[Path], out_path: Path, classifier: bool) -> None:
    """Join the ranks' OOF parts into one file (atomically) and remove the parts."""
    if classifier:
        merged = pd.concat([pd.read_csv(p) for p in parts]).sort_values("ImageId")
        if merged["ImageId"].duplicated().any():
            raise RuntimeError("an image was exported by more than one rank")
        with atomic_output(out_path) as temporary:
            merged.to_csv(temporary, index=False)
    else:
        OofStats.concat([OofStats.load(p) for p in parts]).save(out_path)
    for part in parts:
        part.unlink()
