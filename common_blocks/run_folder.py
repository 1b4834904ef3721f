"""The run folder of one fold, ``OUT_DIR/NAME/foldK/``: where each output goes and the names of the
metrics logged into it. Every reader and writer of a run folder takes its paths from here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
VAL_SCORE = "val/score"  # the fold's score at the config's fixed validation threshold and minimum area
VAL_TUNED_SCORE = "val/tuned_score"  # the same fold's score under the post-processing searched on it
# trainer.monitor -> the metric (maximised) that picks best.ckpt, drives the plateau schedule and early stopping
MONITORED = {"score": VAL_SCORE, "tuned_score": VAL_TUNED_SCORE}
# What another writer of a run folder is told the folder's one writer does (``one_writer``)
RUN_FOLDER_BUSY = "this run folder is being trained"


@dataclass(frozen=True)
class RunPaths:
    """Where one fold's outputs go: ``OUT_DIR/NAME/foldK/``."""

    root: Path

    @classmethod
    def of(cls, out_dir: str | os.PathLike, name: str, fold: int) -> RunPaths:
        return cls(Path(out_dir) / name / f"fold{fold}")

    @property
    def label(self) -> str:
        """``NAME/foldK``, which tells apart the folds of several models."""
        return f"{self.root.absolute().parent.name}/{self.root.name}"

    @property
    def best(self) -> Path:
        return self.root / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.root / "last.ckpt"

    @property
    def averaged(self) -> Path:
        """The mean of the weights of the ``trainer.average_top_k`` best validations."""
        return self.root / "averaged.ckpt"

    @property
    def top_k(self) -> Path:
        """The weights of the best validations so far, one file per epoch, that ``averaged.ckpt`` averages."""
        return self.root / "top_k"

    def checkpoint(self, kind: str) -> Path:
        """The checkpoint an ensemble member names: ``best``, ``averaged`` or ``last``."""
        return {"best": self.best, "averaged": self.averaged, "last": self.last}[kind]

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def previous_run(self) -> Path:
        """Where ``--overwrite`` keeps the earlier run until the new one has its first checkpoint."""
        return self.root / ".previous-run"

    @property
    def run_files(self) -> tuple[Path, ...]:
        """Everything a run writes into its folder, checkpoints first."""
        return self.last, self.best, self.averaged, self.top_k, self.summary, self.config, self.logs

    @property
    def logs(self) -> Path:
        """Lightning's loggers write ``logs/tensorboard/`` and ``logs/csv/`` here."""
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        """The CSV logger's per-step and per-epoch metrics."""
        return self.logs / "csv" / "metrics.csv"
