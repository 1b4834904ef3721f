import subprocess

import numpy as np
import pandas as pd
import pytest

from common_blocks.data.folds import assign_folds, read_folds
from common_blocks.data.formats import class_presence, empty_table, read_labels
from common_blocks.errors import DataError
from tests.cli_contract import SEVERSTAL


def _skewed_table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    table = empty_table([f"{i:05d}.jpg" for i in range(n)])
    for column, rate in zip(["rle_1", "rle_2", "rle_3", "rle_4"], [0.1, 0.03, 0.4, 0.08]):
        table.loc[rng.random(n) < rate, column] = "1 5"
    return table


def test_every_image_in_exactly_one_fold_and_balanced():
    table = _skewed_table()
    folds = assign_folds(table, n_folds=10, seed=3)
    assert folds["ImageId"].tolist() == table["ImageId"].tolist()
    assert set(folds["fold"]) == set(range(10))
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1
    presence = class_presence(table)
    for k in range(4):  # each class spreads evenly over the folds
        per_fold = np.bincount(folds["fold"][presence[:, k]], minlength=10)
        assert per_fold.max() - per_fold.min() <= 2


def test_deterministic_per_seed():
    table = _skewed_table()
    pd.testing.assert_frame_equal(assign_folds(table, 5, seed=1), assign_folds(table, 5, seed=1))
    assert not assign_folds(table, 5, seed=1).equals(assign_folds(table, 5, seed=2))


def test_too_few_images():
    with pytest.raises(DataError, match="cannot fill"):
        assign_folds(_skewed_table(n=3), n_folds=10, seed=0)


@pytest.mark.subprocess
def test_cli_on_real_sample(real_sample, tmp_path):
    out = tmp_path / "folds.csv"
    command = [
        SEVERSTAL,
        "folds",
        "--data-dir",
        str(real_sample),
        "--n-folds",
        "10",
        "--seed",
        "7",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    table = read_labels(real_sample / "train.csv", real_sample / "train_images")
    folds = read_folds(out, table["ImageId"])
    assert len(folds) == 551 and folds["ImageId"].is_unique
    first = out.read_bytes()
    subprocess.run(command, check=True, capture_output=True)
    assert out.read_bytes() == first


@pytest.mark.subprocess
def test_cli_missing_data_dir(tmp_path):
    result = subprocess.run(
        [SEVERSTAL, "folds", "--data-dir", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_read_folds_reports_unassigned_images(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("ImageId,fold\na.jpg,0\n")
    with pytest.raises(DataError, match="1 labelled image"):
        read_folds(path, pd.Series(["a.jpg", "b.jpg"]))
