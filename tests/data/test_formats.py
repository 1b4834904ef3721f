import numpy as np
import pandas as pd
import pytest

from common_blocks.data.formats import (
    class_presence,
    empty_table,
    read_image_ids,
    read_label_rows,
    read_labels,
    write_labels,
    write_submission,
)
from common_blocks.errors import DataError


def _write(path, text):
    path.write_text(text)
    return path


def test_current_and_2019_formats_give_the_same_table(tmp_path, images_dir):
    current = _write(
        tmp_path / "current.csv", "ImageId,ClassId,EncodedPixels\na.jpg,3,1 5\nb.jpg,1,7 2 20 1\n"
    )
    old = _write(
        tmp_path / "old.csv",
        "ImageId_ClassId,EncodedPixels\n"
        + "".join(
            f"{image}_{c},{ {('a.jpg', 3): '1 5', ('b.jpg', 1): '7 2 20 1'}.get((image, c), '') }\n"
            for image in ("a.jpg", "b.jpg", "c.jpg")
            for c in range(1, 5)
        ),
    )
    from_current = read_labels(current, images_dir)
    from_old = read_labels(old)
    pd.testing.assert_frame_equal(from_current, from_old)
    assert from_current["ImageId"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert class_presence(from_current).tolist() == [
        [False, False, True, False],
        [True, False, False, False],
        [False, False, False, False],
    ]


def test_real_labels_round_trip_through_every_writer(real_sample, tmp_path):
    table = read_labels(real_sample / "train.csv", real_sample / "train_images")
    assert len(table) == 551
    assert class_presence(table).sum(axis=0).tolist() == [81, 31, 399, 72]
    write_labels(table, tmp_path / "train.csv")
    assert (tmp_path / "train.csv").read_text() == (real_sample / "train.csv").read_text()
    for fmt in ("current", "2019"):
        write_submission(table, tmp_path / f"{fmt}.csv", fmt)
        pd.testing.assert_frame_equal(read_labels(tmp_path / f"{fmt}.csv"), table)


def test_submission_layouts(tmp_path):
    table = empty_table(["x.jpg", "y.jpg"])
    table.loc[1, "rle_2"] = "3 4"
    write_submission(table, tmp_path / "current.csv", "current")
    lines = (tmp_path / "current.csv").read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels,ClassId"
    assert lines[1:] == [
        "x.jpg,,1",
        "x.jpg,,2",
        "x.jpg,,3",
        "x.jpg,,4",
        "y.jpg,,1",
        "y.jpg,3 4,2",
        "y.jpg,,3",
        "y.jpg,,4",
    ]
    write_submission(table, tmp_path / "old.csv", "2019")
    lines = (tmp_path / "old.csv").read_text().splitlines()
    assert lines[0] == "ImageId_ClassId,EncodedPixels"
    assert lines[6] == "y.jpg_2,3 4"
    assert len(lines) == 9


def test_sample_submission_ids_keep_their_order(real_sample):
    ids = read_image_ids(real_sample / "sample_submission.csv")
    assert len(ids) == 113 and len(set(ids)) == 113
    assert ids[0] == pd.read_csv(real_sample / "sample_submission.csv")["ImageId"].iloc[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\na.jpg,1,5 2\n",
            r"line 3: duplicate row for image a.jpg class 1 \(first at line 2\)",
        ),
        ("ImageId,ClassId,EncodedPixels\na.jpg,5,1 2\n", "line 2: class '5' is not one of 1, 2, 3, 4"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,x,1 2\n", "line 2: class 'x'"),
        ("ImageId,EncodedPixels\na.jpg,1 2\n", "missing column"),
        ("ImageId_ClassId,EncodedPixels\na.jpg,1 2\n", "line 2: ImageId_ClassId 'a.jpg' is not of the form"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_0,1 2\n", "line 2: class '0'"),
        (
            "ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\nb.jpg,2,5 0\n",
            "line 3: image b.jpg class 2: invalid RLE: a zero length",
        ),
        ("", "empty file"),
    ],
)
def test_bad_label_files_name_the_row(tmp_path, text, message):
    path = _write(tmp_path / "labels.csv", text)
    with pytest.raises(DataError, match=message) as error:
        read_label_rows(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_labels_for_images_not_in_the_folder(tmp_path, images_dir):
    path = _write(tmp_path / "labels.csv", "ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\nzzz.jpg,2,5 1\n")
    with pytest.raises(DataError, match="line 3: image zzz.jpg is not in the image folder"):
        read_labels(path, images_dir)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_labels(tmp_path / "nope.csv")
    path = _write(tmp_path / "labels.csv", "ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(DataError, match="image folder not found"):
        read_labels(path, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        read_labels(path, tmp_path / "empty")


def test_write_is_atomic_when_it_fails(tmp_path):
    target = tmp_path / "submission.csv"
    target.write_text("old content\n")
    broken = pd.DataFrame({"ImageId": ["a.jpg"]})  # no RLE columns: the writer fails
    with pytest.raises(KeyError):
        write_submission(broken, target)
    assert target.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_class_presence_dtype():
    table = empty_table(["a.jpg"])
    assert class_presence(table).dtype == np.bool_


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "submission.csv"
    write_submission(empty_table(["a.jpg"]), path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
