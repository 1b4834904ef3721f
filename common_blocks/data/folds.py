"""Cross-validation folds stratified on each image's combination of defect classes.

``severstal folds --data-dir D --n-folds 10 --seed S`` writes ``D/folds.csv`` (``ImageId,fold``):
every image in exactly one fold, the same file for the same labels and seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from common_blocks.data.formats import check_image_ids, class_presence, read_csv_file
from common_blocks.errors import DataError
from common_blocks.files import atomic_output

FOLD_PATTERN = r"[0-9]{1,9}"  # a fold number as folds.csv writes it


def assign_folds(table: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Deal each class-combination stratum, shuffled, round-robin over the folds.

    The deal continues from one stratum to the next, so fold sizes differ by at most one and even a
    combination rarer than ``n_folds`` images lands in different folds.
    """
    if n_folds < 2:
        raise DataError(f"--n-folds must be at least 2, got {n_folds}")
    if len(table) < n_folds:
        raise DataError(f"{len(table)} images cannot fill {n_folds} folds")
    presence = class_presence(table)
    strata = presence @ (1 << np.arange(presence.shape[1]))
    rng = np.random.default_rng(seed)
    folds = np.empty(len(table), dtype=np.int64)
    dealt = 0
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        folds[members] = (dealt + np.arange(members.size)) % n_folds
        dealt += members.size
    return pd.DataFrame({"ImageId": table["ImageId"].to_numpy(), "fold": folds})


def read_folds(
    path: str | os.PathLike, image_ids: pd.Series | None = None, n_folds: int | None = None
) -> pd.DataFrame:
    """Read folds.csv (``ImageId,fold``, a fold a whole number >= 0, below ``n_folds`` when given);
    with ``image_ids``, every labelled image must have exactly one fold. ``fold`` is int64."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: folds file not found; make it with `severstal folds`")
    folds = read_csv_file(path)
    if list(folds.columns) != ["ImageId", "fold"]:
        raise DataError(f"{path}: expected columns ImageId,fold, found {','.join(folds.columns)}")
    lines = folds.index.to_numpy()
    check_image_ids(folds["ImageId"], path, lines)
    # The digits of a fold number and nothing else: "1.0", "a", "-1", "" or "true" are not folds.
    bad = ~folds["fold"].str.fullmatch(FOLD_PATTERN).to_numpy(dtype=bool)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {lines[first]}: fold {folds['fold'].iloc[first]!r} is not an integer fold "
            "number (0, 1, 2, ...)"
        )
    folds["fold"] = folds["fold"].astype(np.int64)
    if n_folds is not None and (folds["fold"] >= n_folds).any():
        first = int(np.flatnonzero((folds["fold"] >= n_folds).to_numpy())[0])
        raise DataError(
            f"{path}, line {lines[first]}: fold {folds['fold'].iloc[first]} is not below the "
            f"{n_folds} folds of data.n_folds"
        )
    duplicated = folds["ImageId"].duplicated().to_numpy()
    if duplicated.any():
        raise DataError(f"{path}, line {lines[np.flatnonzero(duplicated)[0]]}: image listed twice")
    if image_ids is not None:
        missing = sorted(set(image_ids) - set(folds["ImageId"]))
        if missing:
            raise DataError(f"{path}: {len(missing)} labelled image(s) have no fold, e.g. {missing[0]}")
    return folds.reset_index(drop=True)


def write_folds(table: pd.DataFrame, n_folds: int, seed: int, path: str | os.PathLike) -> pd.DataFrame:
    """Assign the label table's images to folds and write ``path`` atomically; returns the folds."""
    folds = assign_folds(table, n_folds, seed)
    with atomic_output(path) as temporary:
        folds.to_csv(temporary, index=False)
    return folds
