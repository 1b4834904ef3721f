"""The classifier gate on image-level (weak) labels: the weak images join the training images of every
fold, never a validation fold, carry their labels as targets, and a tiny training run draws them."""

from collections import Counter
from pathlib import Path

import pytest

from common_blocks.data.datasets import ImageLabelDataset, SegmentationDataset
from common_blocks.data.formats import PRESENCE_COLUMNS, read_weak_labels
from common_blocks.data.synthetic import generate
from common_blocks.training.config import load_config
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.folds_file import write_missing_folds
from common_blocks.training.runner import train_fold
from tests.repository import DEBUG_GATE

N_FOLDS = 4


@pytest.fixture(scope="module")
def weak_data(tmp_path_factory) -> Path:
    """16 train, 2 test and 6 weakly labelled synthetic images, with the gate's folds file."""
    folder = tmp_path_factory.mktemp("weak_data")
    generate(folder, n_train=16, n_test=2, seed=7, workers=1, n_weak=6)
    write_missing_folds(load_config(DEBUG_GATE, [f"data.data_dir={folder}"]))
    return folder


def _gate(data_dir: Path, *overrides: str):
    return load_config(DEBUG_GATE, [f"data.data_dir={data_dir}", "data.weak={}", *overrides])


def test_weak_images_train_in_every_fold_and_validate_in_none(weak_data):
    weak = read_weak_labels(weak_data / "weak_labels.csv", weak_data / "weak_images")
    weak_ids = set(weak["ImageId"])
    assert len(weak_ids) == 6 and weak[list(PRESENCE_COLUMNS)].any(axis=None)
    for fold in range(N_FOLDS):
        datamodule = SteelDataModule(_gate(weak_data), fold)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        real, pool = loader.dataset.datasets
        assert isinstance(pool, ImageLabelDataset) and pool.images_dir == weak_data / "weak_images"
        assert set(pool.image_ids) == weak_ids and len(loader.sampler) == len(real) + len(pool)
        drawn = {index - len(real) for index in loader.sampler if index >= len(real)}
        assert drawn  # the balanced sampler draws weak images too
        valid = datamodule.val_dataloader().dataset
        assert valid.images_dir == weak_data / "train_images" and not set(valid.image_ids) & weak_ids


def test_a_weak_image_is_trained_on_with_its_labels(weak_data):
    datamodule = SteelDataModule(_gate(weak_data), 0)
    datamodule.setup("fit")
    pool = datamodule.train_dataloader().dataset.datasets[1]
    for index in range(len(pool)):
        item = pool[index]
        row = datamodule.weak_table.iloc[index]
        assert item["image_id"] == row["ImageId"]
        assert item["target"].tolist() == row[list(PRESENCE_COLUMNS)].astype(float).tolist()
        assert item["image"].shape[0] == 3 and "mask" not in item


def test_without_data_weak_the_gate_trains_on_the_masked_images_only(weak_data):
    datamodule = SteelDataModule(load_config(DEBUG_GATE, [f"data.data_dir={weak_data}"]), 0)
    datamodule.setup("fit")
    assert datamodule.weak_table is None
    assert isinstance(datamodule.train_dataloader().dataset, SegmentationDataset)


@pytest.mark.slow
def test_gate_training_run_draws_weak_images(weak_data, tmp_path, monkeypatch):
    loads: list[tuple[str, bool]] = []
    original = SegmentationDataset.load

    def recording(self, index, width=None):
        loads.append((self.images_dir.name, self.transform is not None))
        return original(self, index, width)

    monkeypatch.setattr(SegmentationDataset, "load", recording)
    summary = train_fold(_gate(weak_data, "trainer.max_epochs=1"), 0, tmp_path)
    counts = Counter(loads)
    assert counts[("weak_images", True)] > 0  # drawn into training batches
    assert counts[("weak_images", False)] == 0  # never validated, never in the OOF pass
    assert summary["n_valid_images"] == counts[("train_images", False)] / 2  # validation, then the OOF pass
