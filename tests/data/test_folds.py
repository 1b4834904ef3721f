import subprocess

import numpy as np
import pandas as pd
import pytest

from common_blocks.data.folds import TEST_FOLD, assign_folds, local_test_ids, read_folds, write_folds
from common_blocks.data.formats import class_presence, empty_table, read_labels
from common_blocks.data.synthetic import generate
from common_blocks.errors import DataError
from common_blocks.training.config import load_config
from common_blocks.training.folds_file import labelled_folds
from tests.cli_contract import SEVERSTAL
from tests.repository import DEBUG


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


def test_a_local_test_split_is_stratified_and_the_rest_dealt_over_the_folds():
    table = _skewed_table(n=200)
    folds = assign_folds(table, n_folds=5, seed=3, test_fraction=0.2)
    held_out = (folds["fold"] == TEST_FOLD).to_numpy()
    assert held_out.sum() == 40  # 0.2 x 200
    sizes = folds.loc[~held_out, "fold"].value_counts()
    assert set(sizes.index) == set(range(5)) and sizes.max() - sizes.min() <= 1
    presence = class_presence(table)
    strata = presence @ (1 << np.arange(4))
    for stratum in np.unique(strata):  # each class combination is held out in proportion, within one image
        members = strata == stratum
        assert abs(held_out[members].sum() - 0.2 * members.sum()) < 1


def test_without_a_test_fraction_the_folds_are_those_of_a_zero_fraction():
    table = _skewed_table()
    pd.testing.assert_frame_equal(
        assign_folds(table, 5, seed=1), assign_folds(table, 5, seed=1, test_fraction=0.0)
    )


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_test_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(DataError, match="--test-fraction must be at least 0 and below 1"):
        assign_folds(_skewed_table(), 5, seed=0, test_fraction=fraction)


def test_the_local_test_split_is_written_as_test_and_read_back(tmp_path):
    table = _skewed_table(n=50)
    path = tmp_path / "folds.csv"
    written = write_folds(table, 4, seed=0, path=path, test_fraction=0.2)
    assert path.read_text().count(",test\n") == 10
    pd.testing.assert_frame_equal(read_folds(path, table["ImageId"], n_folds=4), written)
    assert local_test_ids(path) == written.loc[written["fold"] == TEST_FOLD, "ImageId"].tolist()


def test_a_folds_file_without_a_local_test_split_says_how_to_make_one(tmp_path):
    path = tmp_path / "folds.csv"
    write_folds(_skewed_table(n=20), 4, seed=0, path=path)
    with pytest.raises(DataError, match="no image has the fold 'test'.*--test-fraction"):
        local_test_ids(path)


def test_training_and_out_of_fold_tables_leave_the_local_test_split_out(tmp_path):
    """``labelled_folds`` is what training and the OOF search read: no test image in any fold."""
    data = tmp_path / "data"
    generate(data, n_train=20, n_test=0, seed=1, workers=1)
    table = read_labels(data / "train.csv", data / "train_images")
    folds = write_folds(table, 2, seed=0, path=data / "folds.csv", test_fraction=0.25)
    cfg = load_config(DEBUG, [f"data.data_dir={data}", "data.n_folds=2"])
    labelled = labelled_folds(cfg)
    held_out = set(folds.loc[folds["fold"] == TEST_FOLD, "ImageId"])
    assert len(held_out) == 5 and not held_out & set(labelled["ImageId"])
    assert len(labelled) == 15 and set(labelled["fold"]) == {0, 1}
