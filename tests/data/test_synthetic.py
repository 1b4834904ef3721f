"""The synthetic data set must look exactly like the Kaggle one and carry labels a model can learn."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from common_blocks.data.formats import PRESENCE_COLUMNS, read_weak_labels
from common_blocks.data.rle import decode
from common_blocks.data.synthetic import generate, image_ids, make_sample, render_sample, weak_image_ids
from tests.cli_contract import SEVERSTAL, assert_one_error_line, run_in_process
from tests.repository import ROOT

SEED, N_TRAIN, N_TEST = 5, 60, 8
LABELS_HEADER = "ImageId,ClassId,EncodedPixels"
SUBMISSION_HEADER = "ImageId,EncodedPixels,ClassId"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("synthetic")
    generate(out_dir, N_TRAIN, N_TEST, SEED, workers=2)
    return out_dir


def _read_labels(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"EncodedPixels": str}, keep_default_na=False)


def _first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


def _read_images(image_dir: Path) -> dict[str, np.ndarray]:
    return {
        path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(image_dir.glob("*.jpg"))
    }


def test_layout_and_images(dataset: Path) -> None:
    for name in ("train.csv", "test_labels.csv", "sample_submission.csv"):
        assert (dataset / name).is_file()
    train_images = _read_images(dataset / "train_images")
    test_images = _read_images(dataset / "test_images")
    assert len(train_images) == N_TRAIN and len(test_images) == N_TEST
    for image in [*train_images.values(), *test_images.values()]:
        assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])


def test_ids_look_like_kaggle_and_do_not_collide(dataset: Path) -> None:
    train_ids, test_ids = image_ids(SEED, N_TRAIN, N_TEST)
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", image_id) for image_id in train_ids + test_ids)
    assert len(set(train_ids) | set(test_ids)) == N_TRAIN + N_TEST
    assert {path.name for path in (dataset / "train_images").iterdir()} == set(train_ids)
    assert {path.name for path in (dataset / "test_images").iterdir()} == set(test_ids)


def test_label_files_follow_kaggle_format(dataset: Path) -> None:
    for name in ("train.csv", "test_labels.csv"):
        assert _first_line(dataset / name) == LABELS_HEADER
        labels = _read_labels(dataset / name)
        assert list(labels.columns) == LABELS_HEADER.split(",")
        assert (labels["EncodedPixels"] != "").all()
        assert labels["ClassId"].between(1, 4).all()
        ordered = labels.sort_values(["ImageId", "ClassId"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(labels, ordered)
        assert not labels.duplicated(["ImageId", "ClassId"]).any()


def test_sample_submission_has_four_empty_rows_per_test_image(dataset: Path) -> None:
    assert _first_line(dataset / "sample_submission.csv") == SUBMISSION_HEADER
    submission = _read_labels(dataset / "sample_submission.csv")
    assert list(submission.columns) == SUBMISSION_HEADER.split(",")
    _, test_ids = image_ids(SEED, N_TRAIN, N_TEST)
    assert len(submission) == 4 * N_TEST
    assert set(submission["ImageId"]) == set(test_ids)
    assert all(classes == [1, 2, 3, 4] for classes in submission.groupby("ImageId")["ClassId"].apply(sorted))
    assert (submission["EncodedPixels"] == "").all()


@pytest.mark.parametrize(("split", "labels_name"), [("train", "train.csv"), ("test", "test_labels.csv")])
def test_labels_are_exactly_the_painted_masks(dataset: Path, split: str, labels_name: str) -> None:
    labels = _read_labels(dataset / labels_name).set_index(["ImageId", "ClassId"])["EncodedPixels"]
    ids = image_ids(SEED, N_TRAIN, N_TEST)[0 if split == "train" else 1]
    for index, image_id in enumerate(ids):
        image, masks = render_sample(SEED, split, index)
        for class_id in range(1, 5):
            assert np.array_equal(decode(labels.get((image_id, class_id), "")), masks[class_id - 1])
        written = cv2.imread(str(dataset / f"{split}_images" / image_id))
        assert np.abs(written.astype(np.int16) - image).mean() < 3.0  # only JPEG loss


def test_about_half_clean_and_all_classes_present(dataset: Path) -> None:
    labels = _read_labels(dataset / "train.csv")
    clean_fraction = 1 - labels["ImageId"].nunique() / N_TRAIN
    assert 0.3 <= clean_fraction <= 0.7
    assert set(labels["ClassId"]) == {1, 2, 3, 4}


def _snapshot(out_dir: Path) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    csvs = {path.name: path.read_bytes() for path in sorted(out_dir.glob("*.csv"))}
    images = {**_read_images(out_dir / "train_images"), **_read_images(out_dir / "test_images")}
    return csvs, images


def test_same_seed_gives_identical_output_for_any_worker_count(tmp_path: Path) -> None:
    generate(tmp_path / "a", 12, 4, seed=11, workers=1)
    generate(tmp_path / "b", 12, 4, seed=11, workers=2)
    generate(tmp_path / "c", 12, 4, seed=12, workers=2)
    csvs_a, images_a = _snapshot(tmp_path / "a")
    csvs_b, images_b = _snapshot(tmp_path / "b")
    csvs_c, images_c = _snapshot(tmp_path / "c")
    assert csvs_a == csvs_b
    assert images_a.keys() == images_b.keys()
    assert all(np.array_equal(images_a[name], images_b[name]) for name in images_a)
    assert csvs_a["train.csv"] != csvs_c["train.csv"]
    assert not images_a.keys() & images_c.keys()


def test_overwrite_replaces_the_earlier_data_set(tmp_path: Path) -> None:
    generate(tmp_path, 5, 3, seed=1, workers=1)
    generate(tmp_path, 2, 1, seed=2, workers=1, overwrite=True)
    train_ids, test_ids = image_ids(2, 2, 1)
    assert {path.name for path in (tmp_path / "train_images").iterdir()} == set(train_ids)
    assert {path.name for path in (tmp_path / "test_images").iterdir()} == set(test_ids)


@pytest.mark.subprocess
def test_cli_refuses_to_overwrite_with_one_line_error(tmp_path: Path) -> None:
    generate(tmp_path, 1, 1, seed=0, workers=1)
    command = [SEVERSTAL, "synthetic", "--out", str(tmp_path), "--n-train", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0]
    assert "Traceback" not in result.stderr


def test_make_sample_paints_only_the_requested_classes() -> None:
    rng = np.random.default_rng(3)
    image, masks = make_sample(rng, classes=(2, 4))
    assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
    assert masks.shape == (4, 256, 1600) and masks.dtype == np.uint8
    assert [bool(mask.any()) for mask in masks] == [False, True, False, True]
    assert set(np.unique(masks)) == {0, 1}
    _, clean_masks = make_sample(rng, classes=())
    assert not clean_masks.any()
    with pytest.raises(ValueError, match="among 1..4"):
        make_sample(rng, classes=(5,))


def test_overwrite_never_replaces_a_real_data_set(real_sample, tmp_path: Path) -> None:
    """A folder with images and labels that this generator did not write (the real sample's layout)
    is refused with --overwrite, in one line, and nothing in it changes."""
    real = tmp_path / "real"
    (real / "train_images").mkdir(parents=True)
    for image in sorted((real_sample / "train_images").iterdir())[:3]:
        shutil.copy(image, real / "train_images" / image.name)
    shutil.copy(real_sample / "train.csv", real / "train.csv")
    before = {path: path.read_bytes() for path in real.rglob("*") if path.is_file()}
    outcome = run_in_process("synthetic", "--out", real, "--n-train", 2, "--n-test", 1, "--overwrite")
    assert_one_error_line(
        outcome, f"{real}: holds images but is not a synthetic data set this generator wrote"
    )
    assert {path: path.read_bytes() for path in real.rglob("*") if path.is_file()} == before


def test_a_weak_pool_holds_the_classes_of_its_painted_masks(tmp_path: Path) -> None:
    generate(tmp_path / "plain", 6, 2, seed=4, workers=1)
    generate(tmp_path / "weak", 6, 2, seed=4, workers=1, n_weak=20)
    csvs, images = _snapshot(tmp_path / "plain")
    weak_csvs, weak_images = _snapshot(tmp_path / "weak")
    assert weak_csvs.pop("weak_labels.csv").startswith(b"ImageId,ClassId\n")
    assert weak_csvs == csvs and images.keys() == weak_images.keys()  # the weak pool changes nothing else
    labels = read_weak_labels(tmp_path / "weak" / "weak_labels.csv", tmp_path / "weak" / "weak_images")
    weak_ids = weak_image_ids(4, 20, images)
    assert sorted(weak_ids) == labels["ImageId"].tolist() and not set(weak_ids) & set(images)
    held = labels.set_index("ImageId").loc[weak_ids, list(PRESENCE_COLUMNS)].to_numpy()
    painted = np.array([render_sample(4, "weak", index)[1].reshape(4, -1).any(axis=1) for index in range(20)])
    assert np.array_equal(held, painted) and held.any(axis=0).all()  # 20 images hold all four classes


def test_overwrite_without_a_weak_pool_removes_the_earlier_one(tmp_path: Path) -> None:
    generate(tmp_path, 3, 1, seed=1, workers=1, n_weak=4)
    generate(tmp_path, 3, 1, seed=1, workers=1, overwrite=True)
    assert not (tmp_path / "weak_labels.csv").exists() and not list((tmp_path / "weak_images").iterdir())
