import json
import subprocess
import sys

import pytest

from common_blocks.cli import main as cli_main
from common_blocks.data.formats import read_labels, write_labels, write_submission
from common_blocks.errors import DataError
from common_blocks.evaluation.scorer import score_submission
from tests.repository import ROOT


def _run_validate(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "validate.py"), "score", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def real_truth(real_sample):
    return read_labels(real_sample / "train.csv", real_sample / "train_images")


@pytest.mark.parametrize("submission_format", ["current", "2019"])
@pytest.mark.parametrize("truth_format", ["current", "2019"])
def test_perfect_submission_scores_one_in_every_format_pair(
    real_sample, real_truth, tmp_path, submission_format, truth_format
):
    write_submission(real_truth, tmp_path / "sub.csv", submission_format)
    if truth_format == "current":
        truth_path, images = real_sample / "train.csv", real_sample / "train_images"
    else:
        write_submission(real_truth, tmp_path / "truth.csv", "2019")
        truth_path, images = tmp_path / "truth.csv", None
    summary = score_submission(tmp_path / "sub.csv", truth_path, images)
    assert summary.score == 1.0 and summary.n_images == 551


def test_cli_json_for_an_empty_submission(real_sample, real_truth, tmp_path):
    empty = real_truth.copy()
    empty[["rle_1", "rle_2", "rle_3", "rle_4"]] = ""
    write_submission(empty, tmp_path / "sub.csv", "current")
    result = _run_validate(
        "--submission",
        tmp_path / "sub.csv",
        "--truth",
        real_sample / "train.csv",
        "--images",
        real_sample / "train_images",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {
        "score",
        "per_class",
        "positive_dice",
        "false_positive_pairs",
        "false_negative_pairs",
        "n_images",
    }
    assert set(report["per_class"]) == {"1", "2", "3", "4"}
    # every true defect is missed: 551 * 4 pairs, 583 of them with a defect
    assert report["score"] == pytest.approx((551 * 4 - 583) / (551 * 4))
    assert report["false_negative_pairs"] == 583 and report["false_positive_pairs"] == 0
    assert report["positive_dice"] == 0.0


def test_missing_rows_count_as_empty(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "ImageId_ClassId,EncodedPixels\n"
        + "".join(f"a.jpg_{c},\n" for c in range(1, 5))
        + "".join(f"b.jpg_{c},{'1 4' if c == 2 else ''}\n" for c in range(1, 5))
    )
    submission = tmp_path / "sub.csv"
    submission.write_text("ImageId,EncodedPixels,ClassId\nb.jpg,1 4,2\n")
    assert score_submission(submission, truth).score == 1.0


def test_submission_row_for_an_unknown_image_is_an_error(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(f"a.jpg_{c},\n" for c in range(1, 5)))
    submission = tmp_path / "sub.csv"
    submission.write_text("ImageId,EncodedPixels,ClassId\na.jpg,,1\nzz.jpg,1 4,2\n")
    with pytest.raises(DataError, match=r"sub.csv, line 3: image zz.jpg is not in the truth"):
        score_submission(submission, truth)


def test_current_truth_needs_the_image_folder(real_sample, tmp_path):
    with pytest.raises(DataError, match="pass --images"):
        score_submission(real_sample / "train.csv", real_sample / "train.csv")


@pytest.mark.parametrize(
    ("submission_text", "message"),
    [
        ("ImageId,EncodedPixels,ClassId\nx.jpg,1 2,1\nx.jpg,3 2,1\n", "line 3: duplicate row"),
        ("ImageId,EncodedPixels,ClassId\nx.jpg,1 2,7\n", "line 2: class '7'"),
        ("ImageId,Pixels,ClassId\nx.jpg,1 2,1\n", "missing column"),
        (
            "ImageId,EncodedPixels,ClassId\nnot_in_folder.jpg,1 2,1\n",
            "line 2: image not_in_folder.jpg is not in the image folder",
        ),
        ("ImageId,EncodedPixels,ClassId\nx.jpg,5 2 1 1,1\n", "line 2: image x.jpg class 1: invalid RLE"),
    ],
)
def test_cli_bad_submissions_give_one_line_errors(tmp_path, capsys, submission_text, message):
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.jpg").write_bytes(b"")
    truth = tmp_path / "truth.csv"
    write_labels(read_labels(_labels(tmp_path), images), truth)
    submission = tmp_path / "sub.csv"
    submission.write_text(submission_text)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["score", "--submission", str(submission), "--truth", str(truth), "--images", str(images)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


def _labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("ImageId,ClassId,EncodedPixels\nx.jpg,3,10 5\n")
    return path


def test_cli_missing_truth_file(tmp_path):
    result = _run_validate("--submission", tmp_path / "a.csv", "--truth", tmp_path / "b.csv")
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr


def _local_test_folds(real_truth, path):
    from common_blocks.data.folds import write_folds

    return write_folds(real_truth, 5, seed=42, path=path, test_fraction=0.2)


def test_folds_scores_only_the_local_test_split(real_sample, real_truth, tmp_path):
    folds = _local_test_folds(real_truth, tmp_path / "folds.csv")
    held_out = folds.loc[folds["fold"] < 0, "ImageId"]
    write_submission(real_truth[real_truth["ImageId"].isin(held_out)], tmp_path / "sub.csv")
    summary = score_submission(
        tmp_path / "sub.csv", real_sample / "train.csv", real_sample / "train_images", tmp_path / "folds.csv"
    )
    assert summary.score == 1.0 and summary.n_images == len(held_out) == 110


def test_a_submission_row_outside_the_local_test_split_is_an_error(real_sample, real_truth, tmp_path):
    _local_test_folds(real_truth, tmp_path / "folds.csv")
    write_submission(real_truth, tmp_path / "sub.csv")  # every image, not just the split
    with pytest.raises(DataError, match="is not in the local test split of"):
        score_submission(
            tmp_path / "sub.csv",
            real_sample / "train.csv",
            real_sample / "train_images",
            tmp_path / "folds.csv",
        )


def test_the_paired_difference_is_the_score_difference_and_its_interval_holds_it(
    real_sample, real_truth, tmp_path
):
    """Perfect against empty on the split: the difference is exactly the gap of the two scores, its
    interval surrounds it; a submission against itself differs by exactly 0, interval [0, 0]."""
    from common_blocks.data.formats import empty_table
    from common_blocks.evaluation.scorer import compare_submissions

    folds = _local_test_folds(real_truth, tmp_path / "folds.csv")
    held_out = folds.loc[folds["fold"] < 0, "ImageId"]
    write_submission(real_truth[real_truth["ImageId"].isin(held_out)], tmp_path / "perfect.csv")
    write_submission(empty_table(held_out), tmp_path / "empty.csv")
    args = (real_sample / "train.csv", real_sample / "train_images", tmp_path / "folds.csv")
    summary, difference = compare_submissions(tmp_path / "perfect.csv", tmp_path / "empty.csv", *args)
    empty = score_submission(tmp_path / "empty.csv", *args).score
    assert difference.baseline_score == pytest.approx(empty) and difference.score == summary.score == 1.0
    assert difference.difference == pytest.approx(1.0 - empty)
    assert difference.low < difference.difference < difference.high
    _, same = compare_submissions(tmp_path / "empty.csv", tmp_path / "empty.csv", *args)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)


def test_the_bootstrap_interval_narrows_with_more_images_and_is_reproducible():
    import numpy as np

    from common_blocks.evaluation.scorer import bootstrap_interval

    rng = np.random.default_rng(0)
    few, many = rng.normal(0.01, 0.1, 50), rng.normal(0.01, 0.1, 5000)
    low_few, high_few = bootstrap_interval(few)
    low_many, high_many = bootstrap_interval(many)
    assert high_many - low_many < (high_few - low_few) / 5  # about sqrt(100) = 10 times narrower
    assert low_many < many.mean() < high_many
    assert bootstrap_interval(few) == (low_few, high_few)
