"""Report figures: overlays, training curves, the data set page (``severstal dataset``)."""

import numpy as np
import pytest

from common_blocks.cli import main as cli_main
from common_blocks.data.formats import read_labels
from common_blocks.reports.figures import (
    LABEL_WIDTH,
    PRED_COLOUR,
    ROW_GAP,
    TRUTH_COLOUR,
    class_distribution,
    image_groups,
    overlay,
    training_curves,
    training_history,
)
from tests.reports.fake_runs import linked_files, make_runs

SHAPE = (40, 120)
GREY = 90


def _rect(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[max(top, 0) : bottom, max(left, 0) : right] = True
    return mask


def _pixels_of(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (picture == colour).all(axis=-1)


def _image() -> np.ndarray:
    return np.full((*SHAPE, 3), GREY, np.uint8)


def test_overlay_draws_truth_red_outside_and_prediction_green_inside():
    truth = np.zeros((4, *SHAPE), np.uint8)
    pred = np.zeros((4, *SHAPE), np.uint8)
    truth[1] = _rect(10, 20, 10, 30)
    pred[1] = _rect(12, 30, 60, 100)
    pred[3] = _rect(5, 15, 5, 15)
    picture = overlay(_image(), truth, pred)
    height, width = SHAPE
    assert picture.shape == (2 * height + ROW_GAP, LABEL_WIDTH + width, 3)  # rows for classes 2 and 4
    class2 = picture[:height, LABEL_WIDTH:]
    class4 = picture[height + ROW_GAP :, LABEL_WIDTH:]
    red_ring = _rect(8, 22, 8, 32) & ~_rect(10, 20, 10, 30)  # 2 pixels outside the true mask
    green_ring = _rect(12, 30, 60, 100) & ~_rect(14, 28, 62, 98)  # 2 pixels inside the predicted mask
    np.testing.assert_array_equal(_pixels_of(class2, TRUTH_COLOUR), red_ring)
    np.testing.assert_array_equal(_pixels_of(class2, PRED_COLOUR), green_ring)
    untouched = ~(red_ring | green_ring)
    assert (class2[untouched] == GREY).all()
    assert not _pixels_of(class4, TRUTH_COLOUR).any()
    np.testing.assert_array_equal(_pixels_of(class4, PRED_COLOUR), _rect(5, 15, 5, 15) & ~_rect(7, 13, 7, 13))


def test_overlay_of_a_perfect_prediction_shows_both_contours():
    masks = np.zeros((4, *SHAPE), np.uint8)
    masks[0] = _rect(10, 30, 20, 80)
    picture = overlay(_image(), masks, masks.copy())[:, LABEL_WIDTH:]
    assert _pixels_of(picture, TRUTH_COLOUR).sum() == (_rect(8, 32, 18, 82) & ~masks[0].astype(bool)).sum()
    assert _pixels_of(picture, PRED_COLOUR).sum() == (masks[0] & ~_rect(12, 28, 22, 78)).sum()


def test_overlay_without_defects_and_with_bad_shapes():
    picture = overlay(_image(), np.zeros((4, *SHAPE), np.uint8), None)
    assert picture.shape == (*SHAPE[:1], LABEL_WIDTH + SHAPE[1], 3)
    assert (picture[:, LABEL_WIDTH:] == GREY).all()
    with pytest.raises(ValueError, match="truth: expected shape"):
        overlay(_image(), np.zeros((4, 10, 10), np.uint8), None)


def test_training_history_tolerates_missing_columns_and_files(tmp_path):
    finished, running, empty = make_runs(tmp_path)
    history = training_history(finished)
    assert history.index.tolist() == [0, 1]  # the re-validation after the fit is not an epoch
    np.testing.assert_allclose(history["train/loss"], [0.9, 0.5])
    np.testing.assert_allclose(history["val/score"], [0.6, 0.8])
    assert history.loc[0, "val/loss"] == 0.5
    history = training_history(running)
    assert history["val/loss"].isna().all() and history.loc[0, "val/score"] == 0.5
    assert training_history(empty).empty
    figure = training_curves([finished, running, empty])
    losses, scores = figure.axes
    assert len(losses.lines) == 3 and len(scores.lines) == 2  # no empty series in the legend


def test_class_distribution_counts(synthetic_data):
    table = read_labels(synthetic_data / "train.csv", synthetic_data / "train_images")
    left, right = class_distribution(table).axes
    assert sum(patch.get_height() for patch in right.patches) == len(table)
    assert len(left.patches) == 5


def test_dataset_cli_writes_a_page_whose_links_exist(synthetic_data, tmp_path, capsys):
    out = tmp_path / "overview"
    cli_main(["dataset", "--data-dir", str(synthetic_data), "--out", str(out), "--per-class", "2"])
    assert capsys.readouterr().out.strip() == f"wrote {out / 'index.html'}"
    links = linked_files(out / "index.html")
    assert all(link.is_file() for link in links)
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.html", *(link.name for link in links)])
    table = read_labels(synthetic_data / "train.csv", synthetic_data / "train_images")
    expected = sum(min(2, int(member.sum())) for member in image_groups(table).values())
    assert len(links) == 1 + expected >= 1 + 5  # the distribution plot, then each group's samples


def test_dataset_cli_reports_a_missing_folder_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dataset", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("error: ") and "nowhere: data folder not found" in error and error.count("\n") == 1
    )
    (tmp_path / "labels_missing").mkdir()
    with pytest.raises(SystemExit):
        cli_main(["dataset", "--data-dir", str(tmp_path / "labels_missing"), "--out", str(tmp_path / "out")])
    assert "train.csv: file not found" in capsys.readouterr().err
