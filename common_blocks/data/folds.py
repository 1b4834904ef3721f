"""Cross-validation folds stratified on each image's combination of defect classes.

``severstal folds --data-dir D --n-folds 10 --seed S`` writes ``D/folds.csv`` (``ImageId,fold``):
every image in exactly one fold, the same file for the same labels and seed. With
``--test-fraction F`` a stratified share F of the images gets the fold ``test`` instead: the local test
split, which no run trains, validates or tunes on, kept to measure what only images outside every fold
can show (an ensemble's gain over one model).
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
TEST_SPLIT = "test"  # the fold value of the local test split in folds.csv
TEST_FOLD = -1  # ... and in the ``fold`` column read_folds returns


def assign_folds(table: pd.DataFrame, n_folds: int, seed: int, test_fraction: float = 0.0) -> pd.DataFrame:
    """Deal each class-combination stratum, shuffled, round-robin over the folds.

    The deal continues from one stratum to the next, so fold sizes differ by at most one and even a
    combination rarer than ``n_folds`` images lands in different folds. With ``test_fraction`` the
    first deal, made the same way, sets aside every image whose running share crosses the next
    multiple of the fraction as ``TEST_FOLD``: the split is stratified and its size is the fraction
    rounded down. The folds are dealt from the rest.
    """
    if n_folds < 2:
        raise DataError(f"--n-folds must be at least 2, got {n_folds}")
    if not 0 <= test_fraction < 1:
        raise DataError(f"--test-fraction must be at least 0 and below 1, got {test_fraction}")
    presence = class_presence(table)
    strata = presence @ (1 << np.arange(presence.shape[1]))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)])
    counts = np.arange(1, order.size + 1)
    in_test = np.floor(counts * test_fraction) > np.floor((counts - 1) * test_fraction)
    rest = order[~in_test]
    if rest.size < n_folds:
        raise DataError(f"{rest.size} images cannot fill {n_folds} folds")
    folds = np.empty(len(table), dtype=np.int64)
    folds[order[in_test]] = TEST_FOLD
    folds[rest] = np.arange(rest.size) % n_folds
    return pd.DataFrame({"ImageId": table["ImageId"].to_numpy(), "fold": folds})


def read_folds(
    path: str | os.PathLike, image_ids: pd.Series | None = None, n_folds: int | None = None
) -> pd.DataFrame:
    """Read folds.csv (``ImageId,fold``, a fold a whole number >= 0, below ``n_folds`` when given, or
    ``test``); with ``image_ids``, every labelled image must have exactly one fold. ``fold`` is int64,
    ``TEST_FOLD`` for the local test split."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: folds file not found; make it with `severstal folds`")
    folds = read_csv_file(path)
    if list(folds.columns) != ["ImageId", "fold"]:
        raise DataError(f"{path}: expected columns ImageId,fold, found {','.join(folds.columns)}")
    lines = folds.index.to_numpy()
    check_image_ids(folds["ImageId"], path, lines)
    # The digits of a fold number, or the word test, and nothing else: "1.0", "a", "-1", "" or "true"
    # are not folds.
    test = (folds["fold"] == TEST_SPLIT).to_numpy()
    bad = ~(folds["fold"].str.fullmatch(FOLD_PATTERN).to_numpy(dtype=bool) | test)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {lines[first]}: fold {folds['fold'].iloc[first]!r} is not an integer fold "
            f"number (0, 1, 2, ...) nor {TEST_SPLIT!r} (the local test split)"
        )
    folds["fold"] = folds["fold"].where(~test, str(TEST_FOLD)).astype(np.int64)
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


def write_folds(
    table: pd.DataFrame, n_folds: int, seed: int, path: str | os.PathLike, test_fraction: float = 0.0
) -> pd.DataFrame:
    """Assign the label table's images to folds and write ``path`` atomically; returns the folds."""
    folds = assign_folds(table, n_folds, seed, test_fraction)
    written = folds.astype({"fold": str})
    written.loc[folds["fold"] == TEST_FOLD, "fold"] = TEST_SPLIT
    with atomic_output(path) as temporary:
        written.to_csv(temporary, index=False)
    return folds


def local_test_ids(path: str | os.PathLike) -> list[str]:
    """The images of the folds file's local test split, in file order; an error when it has none."""
    folds = read_folds(path)
    ids = folds.loc[folds["fold"] == TEST_FOLD, "ImageId"].tolist()
    if not ids:
        raise DataError(
            f"{path}: no image has the fold {TEST_SPLIT!r}; write a local test split with "
            "`severstal folds --test-fraction 0.2`"
        )
    return ids
