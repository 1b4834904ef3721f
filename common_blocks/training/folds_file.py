"""The folds file of a training config: written once where it is missing, and read back as the label
table with each image's fold. Training splits its fold off it; the out-of-fold search, the report and
the sweep read it too, without Lightning."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from common_blocks.data.folds import TEST_FOLD, read_folds, write_folds
from common_blocks.data.formats import read_labels
from common_blocks.errors import DataError
from common_blocks.training.config import TrainConfig


def folds_path(cfg: TrainConfig) -> Path:
    """The folds file: ``data.folds_file``, relative to ``data.data_dir`` unless absolute."""
    return Path(cfg.data.data_dir) / cfg.data.folds_file


def _labels(cfg: TrainConfig) -> pd.DataFrame:
    data_dir = Path(cfg.data.data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found (set --data-dir or data.data_dir)")
    return read_labels(data_dir / "train.csv", data_dir / "train_images")


def check_labels(cfg: TrainConfig) -> None:
    """The data folder and its label file, read and checked, writing nothing (a run does this before it
    builds its model, which may fetch weights; the folds file is written with the fit)."""
    _labels(cfg)


def write_missing_folds(cfg: TrainConfig) -> None:
    """Write the stratified folds file when it does not exist yet (once, before any rank reads it)."""
    path = folds_path(cfg)
    if path.is_file():
        return
    table = _labels(cfg)
    if not os.access(path.parent, os.W_OK):
        raise DataError(
            f"{path} does not exist and {path.parent} is read-only; "
            "set data.folds_file to a writable path (e.g. --set data.folds_file=$PWD/data/folds.csv)"
        )
    write_folds(table, cfg.data.n_folds, cfg.data.fold_seed, path, cfg.data.test_fraction)


def labelled_folds(cfg: TrainConfig) -> pd.DataFrame:
    """The label table with a ``fold`` column from the folds file, which must exist and have
    ``data.n_folds`` folds; the images of its local test split are left out (nothing trains,
    validates or tunes on them)."""
    table = _labels(cfg)
    path = folds_path(cfg)
    if not path.is_file():
        raise DataError(f"{path}: folds file not found (train.py writes it; or run `severstal folds`)")
    folds = read_folds(path, table["ImageId"], n_folds=cfg.data.n_folds)
    folds = folds[folds["fold"] != TEST_FOLD]
    table = table[table["ImageId"].isin(folds["ImageId"])].reset_index(drop=True)
    n_folds = folds["fold"].nunique()
    if n_folds != cfg.data.n_folds:
        raise DataError(
            f"{path} has {n_folds} folds but data.n_folds is {cfg.data.n_folds}; "
            "delete the file to re-split, or set data.folds_file to another name"
        )
    table = table.merge(folds, on="ImageId", how="left", validate="one_to_one")
    if cfg.data.max_images is not None:
        table = table.iloc[: cfg.data.max_images].reset_index(drop=True)
    return table


def check_fold(table: pd.DataFrame, fold: int) -> None:
    present = sorted(table["fold"].unique())
    if fold not in present:
        raise DataError(f"fold {fold} is out of range: the folds file has folds {present[0]}..{present[-1]}")
