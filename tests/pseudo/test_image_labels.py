"""Class-aware pseudo-labels from image-level labels: a class an image does not hold is a certain empty
mask, one it holds the ensemble's mask where it is sure, else left out of the loss (``--unsure ignore``)
or the image left out (``--unsure drop``); end to end through ``severstal pseudo`` and a training run
whose loss receives the left-out classes."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common_blocks.cli import main as cli_main
from common_blocks.data import rle
from common_blocks.data.formats import IGNORED_COLUMNS, PRESENCE_COLUMNS, read_pseudo_labels, read_weak_labels
from common_blocks.data.synthetic import generate
from common_blocks.pseudo.rounds import folder_loader, predict_and_select
from common_blocks.pseudo.selection import SelectionSummary
from common_blocks.training.config import load_config
from common_blocks.training.losses import WeightedLoss
from common_blocks.training.runner import train_fold
from tests.pseudo.test_rounds import CLASS_3_BOX, CPU, stub_predictor
from tests.repository import DEBUG

# The images' classes, by position in the folder: class 3 (the stand-in segmenter's box), class 1
# (which it never draws), none, classes 1 and 3.
LABELS = ({3}, {1}, set(), {1, 3})


@pytest.fixture(scope="module")
def labelled_folder(synthetic_data, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Four of the synthetic test images with the image-level labels of ``LABELS``."""
    folder = tmp_path_factory.mktemp("labelled") / "images"
    folder.mkdir()
    names = sorted(p.name for p in (synthetic_data / "test_images").iterdir())[: len(LABELS)]
    for name in names:
        shutil.copy(synthetic_data / "test_images" / name, folder / name)
    rows = "".join(
        f"{name},{class_id}\n" for name, classes in zip(names, LABELS) for class_id in sorted(classes)
    )
    csv = folder.parent / "labels.csv"
    csv.write_text("ImageId,ClassId\n" + rows)
    return folder, read_weak_labels(csv, folder)


def _round(labelled_folder, gate_logits, on_unsure) -> tuple[pd.DataFrame, SelectionSummary]:
    folder, labels = labelled_folder
    summary = SelectionSummary(on_unsure=on_unsure)
    predictions, _ = predict_and_select(
        stub_predictor(gate_logits), folder_loader(folder, False, 3, 0, CPU), summary, labels
    )
    return predictions, summary


def _box() -> str:
    box = np.zeros((256, 1600), np.uint8)
    box[CLASS_3_BOX] = 1
    return rle.encode(box)


def test_absent_classes_are_empty_sure_ones_masked_unsure_ones_ignored(labelled_folder):
    predictions, summary = _round(labelled_folder, [9, 9, 9, 9], "ignore")  # sure of every class
    assert predictions["kept"].all() and summary.kept == 4
    box = _box()
    # class 3 held: the box; not held: empty although the segmenter draws it
    assert predictions["rle_3"].tolist() == [box, "", "", box]
    # class 1 held, but no mask of it: unsure, left out of the loss, no pixels written
    assert predictions["ignored_1"].tolist() == [False, True, False, True]
    assert not predictions[list(IGNORED_COLUMNS[1:])].any(axis=None)
    assert (predictions[["rle_1", "rle_2", "rle_4"]] == "").all(axis=None)
    report = summary.to_dict()
    assert report["ignored_per_class"] == {"1": 2, "2": 0, "3": 0, "4": 0}
    assert report["kept_per_class"] == {"1": 0, "2": 0, "3": 2, "4": 0} and report["kept_defect_free"] == 1
    assert report["unsure"] == "ignore" and report["rejected_unsure"] == 2


def test_drop_leaves_out_the_images_with_an_unsure_class(labelled_folder):
    predictions, summary = _round(labelled_folder, [9, 9, 9, 9], "drop")
    assert predictions["kept"].tolist() == [True, False, True, False] and summary.kept == 2
    assert not predictions.loc[predictions["kept"], list(IGNORED_COLUMNS)].any(axis=None)


def test_an_unsure_gate_ignores_every_held_class(labelled_folder):
    predictions, _ = _round(labelled_folder, [-9, -9, -9, -9], "ignore")
    held = labelled_folder[1][list(PRESENCE_COLUMNS)].to_numpy()
    assert (predictions[list(IGNORED_COLUMNS)].to_numpy() == held).all()
    assert (predictions[["rle_1", "rle_2", "rle_3", "rle_4"]] == "").all(axis=None)


@pytest.fixture(scope="module")
def weak_pool(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weak")
    generate(folder, n_train=0, n_test=0, seed=3, workers=1, n_weak=8)
    return folder


def _pseudo(ensemble: Path, out: Path, weak_pool: Path, *options: str) -> None:
    cli_main(["pseudo", "--config", str(ensemble), "--round", "1", "--out-dir", str(out), "--workers", "0",
              "--images", str(weak_pool / "weak_images"), "--image-labels", str(weak_pool / "weak_labels.csv"),
              *options])  # fmt: skip


@pytest.mark.parametrize("unsure", [[], ["--unsure", "ignore"], ["--unsure", "drop"]])
def test_pseudo_command_writes_class_aware_labels(untrained_ensemble, weak_pool, tmp_path, capsys, unsure):
    """The untrained gate says 0.5 for every class: every class an image holds is unsure."""
    _pseudo(untrained_ensemble, tmp_path, weak_pool, *unsure)
    out = capsys.readouterr().out
    labels = read_weak_labels(weak_pool / "weak_labels.csv", weak_pool / "weak_images")
    table = read_pseudo_labels(tmp_path / "round1.csv", weak_pool / "weak_images")
    assert (table[["rle_1", "rle_2", "rle_3", "rle_4"]] == "").all(axis=None)
    held = labels.set_index("ImageId").loc[table["ImageId"], list(PRESENCE_COLUMNS)].to_numpy()
    if unsure == ["--unsure", "drop"]:
        assert not held.any() and len(table) == (~labels[list(PRESENCE_COLUMNS)].any(axis=1)).sum() > 0
    else:
        assert len(table) == 8 and held.any() and (table[list(IGNORED_COLUMNS)].to_numpy() == held).all()
    assert (
        "images with image-level labels" in out and f"--set pseudo.images={weak_pool / 'weak_images'}" in out
    )


@pytest.mark.slow
def test_training_on_class_aware_labels_leaves_the_ignored_classes_out(
    untrained_ensemble, synthetic_data, weak_pool, tmp_path, capsys, monkeypatch
):
    _pseudo(untrained_ensemble, tmp_path / "pseudo", weak_pool)
    weights: list[torch.Tensor] = []
    original = WeightedLoss.forward

    def recording(self, logits, target, class_weight=None):
        if self.training and class_weight is not None:
            weights.append(class_weight.clone())
        return original(self, logits, target, class_weight)

    monkeypatch.setattr(WeightedLoss, "forward", recording)
    cfg = load_config(DEBUG, [f"data.data_dir={synthetic_data}", "trainer.max_epochs=1", "data.samples_per_epoch=8",
                              f"pseudo.labels={tmp_path / 'pseudo' / 'round1.csv'}", "pseudo.fraction=0.5",
                              f"pseudo.images={weak_pool / 'weak_images'}"])  # fmt: skip
    train_fold(cfg, 0, tmp_path / "runs")  # 4 batches: 8 real images, one pass over the 8 weak ones
    drawn = torch.cat(weights)
    assert drawn.shape[1] == 4 and set(drawn.unique().tolist()) == {0.0, 1.0}
    assert (drawn == 0).any(dim=1).sum() > 0  # pseudo-labelled images with a class left out
    assert (drawn == 1).all(dim=1).sum() >= 8  # the real images (and the pseudo ones that ignore nothing)
