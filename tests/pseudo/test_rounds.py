"""Pseudo-labels: the selection rule, the storage format, batch mixing (fraction, determinism, DDP shards,
never in validation), bad inputs, and one tiny training run that really draws pseudo-labelled images."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common_blocks.cli import main as cli_main
from common_blocks.data import rle
from common_blocks.data.datasets import SegmentationDataset
from common_blocks.data.formats import RLE_COLUMNS, read_labels, read_pseudo_labels, write_pseudo_labels
from common_blocks.data.samplers import BalancedSampler, MixedSampler, pseudo_counts
from common_blocks.errors import ConfigError, DataError
from common_blocks.inference.predictor import EnsemblePredictor, WeightedModel
from common_blocks.pseudo.rounds import folder_loader, predict_and_select
from common_blocks.pseudo.selection import SelectionSummary
from common_blocks.training.config import load_config
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.runner import train_fold
from tests.stand_ins import StandIn

CLASS_3_BOX = (slice(100, 140), slice(300, 500))
CPU = torch.device("cpu")


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
    assert SelectionSummary().add(np.array(gate), masks(*present)) is kept


def test_selection_thresholds_are_parameters_and_validated():
    assert SelectionSummary(p_high=0.8, p_low=0.2).add(np.array([0.85, 0.1, 0.1, 0.1]), masks(1))
    assert not SelectionSummary().add(np.array([0.85, 0.1, 0.1, 0.1]), masks(1))
    with pytest.raises(ConfigError, match="p_low < p_high"):
        SelectionSummary(p_high=0.3, p_low=0.6)
    with pytest.raises(ValueError, match="4 gate probabilities"):
        SelectionSummary().add(np.zeros(3), masks())


def test_summary_counts_kept_images_classes_and_rejections():
    summary = SelectionSummary(p_high=0.9, p_low=0.1)
    assert summary.add(np.array([0.99, 0.0, 0.95, 0.0]), masks(1, 3))
    assert summary.add(np.array([0.0, 0.0, 0.0, 0.02]), masks())
    assert not summary.add(np.array([0.5, 0.0, 0.0, 0.0]), masks(1))
    assert not summary.add(np.array([0.99, 0.0, 0.0, 0.0]), masks())
    d = summary.to_dict()
    counts = {
        key: d[key] for key in ("images_considered", "images_kept", "rejected_unsure", "rejected_disagree")
    }
    assert counts == {"images_considered": 4, "images_kept": 2, "rejected_unsure": 1, "rejected_disagree": 1}
    assert d["kept_per_class"] == {"1": 1, "2": 0, "3": 1, "4": 0} and d["kept_defect_free"] == 1
    assert d["mean_confidence_kept"] == pytest.approx((0.95 + 0.98) / 2)
    assert "kept 2 of 4" in summary.format()


# --- storage ----------------------------------------------------------------------------------------


def _test_truth(data_dir: Path) -> pd.DataFrame:
    return read_labels(data_dir / "test_labels.csv", data_dir / "test_images")


def test_pseudo_csv_round_trip_keeps_defect_free_images_and_only_the_listed_ones(synthetic_data, tmp_path):
    truth = _test_truth(synthetic_data)
    defect = (truth[list(RLE_COLUMNS)] != "").any(axis=1)
    kept = (
        pd.concat([truth[defect].head(2), truth[~defect].head(2)])
        .sort_values("ImageId")
        .reset_index(drop=True)
    )
    assert len(kept) == 4
    write_pseudo_labels(kept, tmp_path / "round1.csv")
    assert len(pd.read_csv(tmp_path / "round1.csv")) == 4 * len(kept)
    pd.testing.assert_frame_equal(
        read_pseudo_labels(tmp_path / "round1.csv", synthetic_data / "test_images"), kept
    )


@pytest.mark.slow
def test_csv_naming_a_missing_image_is_a_one_line_data_error(synthetic_data, debug_config, tmp_path, capsys):
    csv = tmp_path / "round1.csv"
    csv.write_text("ImageId,ClassId,EncodedPixels\nnot_a_test_image.jpg,1,1 5\n")
    with pytest.raises(DataError) as error:
        read_pseudo_labels(csv, synthetic_data / "test_images")
    message = str(error.value)
    assert "\n" not in message and "line 2" in message and "not_a_test_image.jpg" in message
    with pytest.raises(SystemExit) as exit_code:
        cli_main(["train", "--config", str(debug_config), "--fold", "0", "--data-dir", str(synthetic_data),
                    "--out-dir", str(tmp_path / "runs"), "--pseudo", str(csv)])  # fmt: skip
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


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


def test_pseudo_images_are_in_training_batches_only(data, debug_config, pseudo_csv):
    datamodule = SteelDataModule(_config(debug_config, data, f"pseudo.labels={pseudo_csv}"), 0)
    datamodule.setup("fit")
    pseudo_ids = set(datamodule.pseudo_table["ImageId"])
    loader = datamodule.train_dataloader()
    n_real = len(datamodule.train_table)
    drawn = [datamodule.pseudo_table["ImageId"][i - n_real] for i in loader.sampler if i >= n_real]
    assert set(drawn) <= pseudo_ids and len(drawn) == pytest.approx(0.3 * len(loader.sampler), abs=1)
    assert loader.dataset.datasets[1].images_dir == data / "test_images"
    valid = datamodule.val_dataloader().dataset
    assert valid.images_dir == data / "train_images" and not set(valid.image_ids) & pseudo_ids


def test_empty_pseudo_csv_warns_and_trains_on_real_images(data, debug_config, tmp_path):
    csv = tmp_path / "round1.csv"
    write_pseudo_labels(_test_truth(data).iloc[:0], csv)
    datamodule = SteelDataModule(_config(debug_config, data, f"pseudo.labels={csv}"), 0)
    with pytest.warns(UserWarning, match="no pseudo-labelled image; training on real images only"):
        datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, BalancedSampler)
    assert next(iter(loader))["image"].shape[0] == 4


@pytest.mark.slow
def test_training_run_draws_pseudo_images(synthetic_data, debug_config, pseudo_csv, tmp_path, monkeypatch):
    loads: list[tuple[str, bool, str]] = []
    original = SegmentationDataset.load

    def recording(self, index, width=None):
        loads.append((self.images_dir.name, self.transform is not None, self.image_ids[index]))
        return original(self, index, width)

    monkeypatch.setattr(SegmentationDataset, "load", recording)
    cfg = _config(debug_config, synthetic_data, f"pseudo.labels={pseudo_csv}", "data.samples_per_epoch=12")
    summary = train_fold(cfg, 0, tmp_path)
    counts = Counter((folder, training) for folder, training, _ in loads)
    train_real, train_pseudo = counts[("train_images", True)], counts[("test_images", True)]
    assert train_pseudo > 0 and train_pseudo / (train_real + train_pseudo) == pytest.approx(0.3, abs=0.1)
    listed = set(pd.read_csv(pseudo_csv)["ImageId"])
    assert {image for folder, _, image in loads if folder == "test_images"} <= listed
    assert counts[("test_images", False)] == 0  # validation and the OOF export see real images only
    assert summary["n_valid_images"] == counts[("train_images", False)] / 2  # validation, then the OOF pass


# --- one round with an ensemble ----------------------------------------------------------------------


class Constant(StandIn):
    """A stand-in model: the same logits for every image (``(4,)`` per image, or a class-3 box)."""

    def __init__(self, task_mode: str, gate_logits: list[float] | None = None) -> None:
        super().__init__(task_mode)
        self.gate_logits = torch.tensor(gate_logits or [0.0] * 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.task_mode == "classification":
            return self.gate_logits.expand(images.shape[0], 4)
        logits = torch.full((images.shape[0], 4, *images.shape[-2:]), -20.0)
        logits[:, 2, CLASS_3_BOX[0], CLASS_3_BOX[1]] = 20.0
        return logits


def stub_predictor(gate_logits: list[float]) -> EnsemblePredictor:
    return EnsemblePredictor(
        [WeightedModel(Constant("multilabel"))], [WeightedModel(Constant("classification", gate_logits))]
    )


@pytest.mark.parametrize(
    ("gate_logits", "kept", "rejected_as"),
    [
        ([-9, -9, 9, -9], 8, None),  # sure of class 3 only, and the masks hold class 3 only
        ([-9, -9, 0, -9], 0, "rejected_unsure"),  # p = 0.5 for class 3
        ([9, -9, 9, -9], 0, "rejected_disagree"),  # sure of class 1, which has no mask
    ],
)
def test_round_keeps_the_confident_agreeing_images_with_their_masks(
    synthetic_data, gate_logits, kept, rejected_as
):
    summary = SelectionSummary()
    predictions, unreadable = predict_and_select(
        stub_predictor(gate_logits), folder_loader(synthetic_data / "test_images", False, 3, 0, CPU), summary
    )
    assert summary.considered == len(predictions) == 8 and not unreadable
    table = predictions[predictions["kept"]]
    assert len(table) == summary.kept == kept
    if kept:
        box = np.zeros((256, 1600), np.uint8)
        box[CLASS_3_BOX] = 1
        assert (table["rle_3"] == rle.encode(box)).all()
        assert (table[["rle_1", "rle_2", "rle_4"]] == "").all(axis=None)
    else:
        assert summary.to_dict()[rejected_as] == 8


def test_round_leaves_out_unreadable_images(synthetic_data, tmp_path):
    folder = tmp_path / "test_images"
    shutil.copytree(synthetic_data / "test_images", folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    summary = SelectionSummary()
    predictions, unreadable = predict_and_select(
        stub_predictor([-9, -9, 9, -9]), folder_loader(folder, False, 4, 0, CPU), summary
    )
    assert len(predictions) == summary.kept == 8 and "broken.jpg" not in set(predictions["ImageId"])
    assert len(unreadable) == 1 and "broken.jpg" in unreadable[0]


def test_round_that_keeps_nothing_warns_and_writes_an_empty_csv(untrained_ensemble, tmp_path, capsys):
    cli_main(["pseudo", "--config", str(untrained_ensemble), "--round", "1", "--out-dir", str(tmp_path),
              "--workers", "0"])  # fmt: skip
    out, err = capsys.readouterr()
    report = json.loads((tmp_path / "round1_summary.json").read_text())
    assert "kept 0 of 8 test images" in out and err.startswith("warning: round 1 kept no image")
    assert (tmp_path / "round1.csv").read_text().strip() == "ImageId,ClassId,EncodedPixels"
    assert report["images_considered"] == report["rejected_unsure"] == 8 and report["images_kept"] == 0
    assert report["mean_confidence"] == pytest.approx(0.5)  # every probability is 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "runs_dir=/nonexistent/runs",
            "missing: /nonexistent/runs/debug/fold0/best.ckpt",
        ),  # the ensemble's loader
        ("gate=null", "pseudo-labelling needs a classifier gate"),
    ],
)
def test_round_input_errors_are_one_line(untrained_ensemble, tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_code:
        cli_main(["pseudo", "--config", str(untrained_ensemble), "--round", "1", "--out-dir", str(tmp_path),
                          "--set", override])  # fmt: skip
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not list(tmp_path.iterdir())
