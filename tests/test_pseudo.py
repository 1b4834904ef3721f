"""Pseudo-labels: the selection rule, the storage format, batch mixing (fraction, determinism, DDP shards,
never in validation), bad inputs, and one tiny training run that really draws pseudo-labelled images."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common_blocks.config import load_config
from common_blocks.datamodule import SteelDataModule
from common_blocks.datasets import SegmentationDataset
from common_blocks.errors import ConfigError, DataError
from common_blocks.formats import read_labels
from common_blocks.pseudo import (
    MixedSampler,
    SelectionSummary,
    pseudo_counts,
    read_pseudo_labels,
    select,
    write_pseudo_labels,
)
from common_blocks.runner import train_fold
from common_blocks.sampler import BalancedSampler

ROOT = Path(__file__).resolve().parents[1]


def masks(*present: int) -> np.ndarray:
    """(4, 8, 8) masks with a small defect for each listed class (1-based)."""
    out = np.zeros((4, 8, 8), np.uint8)
    for class_id in present:
        out[class_id - 1, 2:4, 2:5] = 1
    return out


# --- selection rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "present", "kept"),
    [
        ([0.99, 0.01, 0.02, 0.00], (1,), True),  # confident, masks agree
        ([0.01, 0.01, 0.02, 0.00], (), True),  # confidently defect-free
        ([0.99, 0.01, 0.97, 0.00], (1, 3), True),
        ([0.99, 0.01, 0.50, 0.00], (1,), False),  # class 3 unsure
        ([0.99, 0.01, 0.02, 0.00], (), False),  # gate says class 1, post-processing removed its mask
        ([0.99, 0.01, 0.02, 0.00], (1, 4), False),  # mask of class 4 the gate rules out
        ([0.95, 0.01, 0.02, 0.00], (1,), False),  # exactly p_high is not confident
        ([0.96, 0.05, 0.02, 0.00], (1,), False),  # exactly p_low is not confident
        ([np.nextafter(0.95, 1), np.nextafter(0.05, 0), 0.0, 0.0], (1,), True),  # just beyond both
    ],
)
def test_selection_keeps_confident_agreeing_images_only(gate, present, kept):
    assert select(np.array(gate), masks(*present)) is kept


def test_selection_thresholds_are_parameters_and_validated():
    assert select(np.array([0.85, 0.1, 0.1, 0.1]), masks(1), p_high=0.8, p_low=0.2)
    assert not select(np.array([0.85, 0.1, 0.1, 0.1]), masks(1))
    with pytest.raises(ConfigError, match="p_low < p_high"):
        select(np.zeros(4), masks(), p_high=0.3, p_low=0.6)
    with pytest.raises(ValueError, match="4 gate probabilities"):
        select(np.zeros(3), masks())


def test_summary_counts_kept_images_classes_and_rejections():
    summary = SelectionSummary(p_high=0.9, p_low=0.1)
    assert summary.add(np.array([0.99, 0.0, 0.95, 0.0]), masks(1, 3))
    assert summary.add(np.array([0.0, 0.0, 0.0, 0.02]), masks())
    assert not summary.add(np.array([0.5, 0.0, 0.0, 0.0]), masks(1))
    assert not summary.add(np.array([0.99, 0.0, 0.0, 0.0]), masks())
    d = summary.to_dict()
    assert (d["images_considered"], d["images_kept"], d["rejected_unsure"], d["rejected_disagree"]) == (
        4,
        2,
        1,
        1,
    )
    assert d["kept_per_class"] == {"1": 1, "2": 0, "3": 1, "4": 0} and d["kept_defect_free"] == 1
    assert d["mean_confidence_kept"] == pytest.approx((0.95 + 0.98) / 2)
    assert "kept 2 of 4" in summary.format()


# --- storage ----------------------------------------------------------------------------------------


def _test_truth(data_dir: Path) -> pd.DataFrame:
    return read_labels(data_dir / "test_labels.csv", data_dir / "test_images")


def test_pseudo_csv_round_trip_keeps_defect_free_images_and_only_the_listed_ones(synthetic_data, tmp_path):
    truth = _test_truth(synthetic_data)
    kept = pd.concat(
        [truth[truth["rle_1"] + truth["rle_3"] != ""].head(2), truth[truth["rle_3"] == ""].head(2)]
    )
    kept = kept.sort_values("ImageId").reset_index(drop=True)
    write_pseudo_labels(kept, tmp_path / "round1.csv")
    assert len(pd.read_csv(tmp_path / "round1.csv")) == 4 * len(kept)
    pd.testing.assert_frame_equal(
        read_pseudo_labels(tmp_path / "round1.csv", synthetic_data / "test_images"), kept
    )


def test_csv_naming_a_missing_image_is_a_one_line_data_error(synthetic_data, tmp_path):
    csv = tmp_path / "round1.csv"
    csv.write_text("ImageId,ClassId,EncodedPixels\nnot_a_test_image.jpg,1,1 5\n")
    with pytest.raises(DataError) as error:
        read_pseudo_labels(csv, synthetic_data / "test_images")
    message = str(error.value)
    assert "\n" not in message and "line 2" in message and "not_a_test_image.jpg" in message
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/debug.yaml", "--fold", "0", "--data-dir",
         synthetic_data, "--out-dir", tmp_path / "runs", "--pseudo", csv],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"error: {message}"]


# --- batch mixing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_real", "batch", "fraction"), [(700, 4, 0.3), (500, 8, 0.25), (97, 3, 0.5), (40, 1, 0.3)]
)
def test_every_batch_and_the_epoch_hold_the_fraction(n_real, batch, fraction):
    counts = pseudo_counts(n_real, batch, fraction)
    assert (np.abs(counts - fraction * batch) < 1).all()
    assert counts.sum() / (len(counts) * batch) == pytest.approx(
        fraction, abs=1 / (len(counts) * batch) + 1e-12
    )
    real_used = len(counts) * batch - counts.sum()
    assert n_real - batch < real_used <= n_real  # all real draws but a part-batch


def _presence(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 4)) < 0.2


def _mixed(rank: int, world: int, n_pseudo: int = 30, epoch: int = 0) -> MixedSampler:
    real = BalancedSampler(_presence(50), 120, seed=1, num_replicas=world, rank=rank)
    sampler = MixedSampler(
        real, 50, n_pseudo, batch_size=4, fraction=0.3, seed=1, num_replicas=world, rank=rank
    )
    sampler.set_epoch(epoch)
    return sampler


def _split(indices: list[int], offset: int = 50) -> tuple[list[int], list[int]]:
    return [i for i in indices if i < offset], [i for i in indices if i >= offset]


def test_mixed_epoch_is_deterministic_and_uses_the_balanced_draws_for_real_images():
    first, again, later = list(_mixed(0, 1)), list(_mixed(0, 1)), list(_mixed(0, 1, epoch=1))
    assert first == again and first != later
    real, pseudo = _split(first)
    assert real == list(_mixed(0, 1).real)[: len(real)]  # the balanced epoch, in its order
    assert len(first) == len(_mixed(0, 1)) and len(pseudo) / len(first) == pytest.approx(0.3, abs=0.01)
    assert set(pseudo) <= set(range(50, 80))


def test_ddp_ranks_get_disjoint_shards_of_both_streams():
    shards = [_split(list(_mixed(rank, 2, n_pseudo=60))) for rank in (0, 1)]
    assert [len(real) for real, _ in shards] == [len(shards[0][0])] * 2  # same batches on both ranks
    epoch = BalancedSampler(_presence(50), 120, seed=1, num_replicas=2, rank=0).epoch_indices()
    for rank, (real, _) in enumerate(shards):
        assert real == epoch[rank::2].tolist()[: len(real)]  # the rank's own shard of the balanced epoch
    assert not set(shards[0][1]) & set(shards[1][1])  # one pass over 60 pseudo images: disjoint
    # Fewer pseudo images than draws: whole passes, every image drawn equally often (up to one).
    counts = Counter(i for rank in (0, 1) for i in _split(list(_mixed(rank, 2, n_pseudo=7)))[1])
    assert len(counts) == 7 and max(counts.values()) - min(counts.values()) <= 1


# --- the data module ---------------------------------------------------------------------------------


def _config(debug_config, data_dir, *overrides):
    return load_config(debug_config, [f"data.data_dir={data_dir}", "trainer.max_epochs=1", *overrides])


@pytest.fixture(scope="module")
def pseudo_csv(synthetic_data, tmp_path_factory) -> Path:
    """True labels of 6 of the 8 test images (2 left out), as a pseudo-label round."""
    path = tmp_path_factory.mktemp("pseudo") / "round1.csv"
    write_pseudo_labels(_test_truth(synthetic_data).iloc[:6], path)
    return path


def test_pseudo_images_are_in_training_batches_only(synthetic_data, debug_config, pseudo_csv):
    data = SteelDataModule(_config(debug_config, synthetic_data, f"pseudo.labels={pseudo_csv}"), 0)
    data.setup("fit")
    pseudo_ids = set(data.pseudo_table["ImageId"])
    train = data.train_dataloader()
    drawn = [
        data.pseudo_table["ImageId"][i - len(data.train_table)]
        for i in train.sampler
        if i >= len(data.train_table)
    ]
    assert set(drawn) <= pseudo_ids and len(drawn) == pytest.approx(0.3 * len(train.sampler), abs=1)
    assert train.dataset.datasets[1].images_dir == synthetic_data / "test_images"
    valid = data.val_dataloader().dataset
    assert valid.images_dir == synthetic_data / "train_images" and not set(valid.image_ids) & pseudo_ids


def test_empty_pseudo_csv_warns_and_trains_on_real_images(synthetic_data, debug_config, tmp_path):
    csv = tmp_path / "round1.csv"
    write_pseudo_labels(_test_truth(synthetic_data).iloc[:0], csv)
    data = SteelDataModule(_config(debug_config, synthetic_data, f"pseudo.labels={csv}"), 0)
    with pytest.warns(UserWarning, match="no pseudo-labelled image; training on real images only"):
        data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, BalancedSampler)
    assert next(iter(loader))["image"].shape[0] == 4


def test_training_run_draws_pseudo_images(synthetic_data, debug_config, pseudo_csv, tmp_path, monkeypatch):
    loads: list[tuple[str, bool]] = []
    original = SegmentationDataset.load

    def recording(self, index):
        loads.append((self.images_dir.name, self.transform is not None))
        return original(self, index)

    monkeypatch.setattr(SegmentationDataset, "load", recording)
    cfg = _config(debug_config, synthetic_data, f"pseudo.labels={pseudo_csv}", "data.samples_per_epoch=12")
    summary = train_fold(cfg, 0, tmp_path)
    counts = Counter(loads)
    train_real, train_pseudo = counts[("train_images", True)], counts[("test_images", True)]
    assert train_pseudo > 0 and train_pseudo / (train_real + train_pseudo) == pytest.approx(0.3, abs=0.1)
    assert counts[("test_images", False)] == 0  # validation and the OOF export see real images only
    assert summary["n_valid_images"] == counts[("train_images", False)] / 2  # validation, then the OOF pass
