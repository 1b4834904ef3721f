"""Image-level (weak) labels and the pseudo-label column ``Ignored``: strict readers that name the file and
line, round trips through the writers, old pseudo-label files still read, and the real sample's weak pool."""

import pandas as pd
import pytest

from common_blocks.data.formats import (
    IGNORED_COLUMNS,
    PRESENCE_COLUMNS,
    read_pseudo_labels,
    read_weak_labels,
    write_pseudo_labels,
    write_weak_labels,
)
from common_blocks.errors import DataError

HEADER = "ImageId,ClassId\n"


def _write(path, text):
    path.write_text(text)
    return path


def test_weak_labels_cover_every_image_of_the_folder(tmp_path, images_dir):
    path = _write(tmp_path / "weak.csv", HEADER + "c.jpg,4\na.jpg,1\na.jpg,3\n")
    table = read_weak_labels(path, images_dir)
    assert table["ImageId"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]  # b.jpg has no row: defect-free
    assert table[list(PRESENCE_COLUMNS)].to_numpy().tolist() == [
        [True, False, True, False],
        [False, False, False, False],
        [False, False, False, True],
    ]
    copy = tmp_path / "copy.csv"
    write_weak_labels(table, copy)
    assert copy.read_text() == HEADER + "a.jpg,1\na.jpg,3\nc.jpg,4\n"
    pd.testing.assert_frame_equal(read_weak_labels(copy, images_dir), table)


def test_header_only_means_every_image_is_defect_free(tmp_path, images_dir):
    table = read_weak_labels(_write(tmp_path / "weak.csv", HEADER), images_dir)
    assert len(table) == 3 and not table[list(PRESENCE_COLUMNS)].any(axis=None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "a.jpg,1\n\nzzz.jpg,2\n", "line 4: image zzz.jpg is not in the image folder"),
        (HEADER + "a.jpg,2\nb.jpg,1\na.jpg,2\n", r"line 4: duplicate row for image a.jpg class 2 \(first at line 2\)"),
        (HEADER + "a.jpg,5\n", "line 2: class '5' is not one of 1, 2, 3, 4"),
        (HEADER + "a.jpg,3.0\n", "line 2: class '3.0'"),
        (HEADER + "a.jpg,\n", "line 2: class ''"),
        (HEADER + "../a.jpg,1\n", "line 2: ImageId '../a.jpg' is not a bare file name"),
        (HEADER + ",1\n", "line 2: empty ImageId"),
        (HEADER + "a.jpg,1,2\n", "line 2: 3 fields where 2 were expected"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 5\n", "expected the header ImageId,ClassId .*found ImageId,ClassId,EncodedPixels"),
        ("ClassId,ImageId\n1,a.jpg\n", "expected the header ImageId,ClassId"),
        ("", "empty file"),
    ],
)  # fmt: skip
def test_bad_weak_label_files_name_the_file_and_line(tmp_path, images_dir, text, message):
    path = _write(tmp_path / "weak.csv", text)
    with pytest.raises(DataError, match=message) as error:
        read_weak_labels(path, images_dir)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_weak_labels_need_their_image_folder(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        read_weak_labels(_write(tmp_path / "weak.csv", HEADER), tmp_path / "missing")


def test_real_weak_pool(real_sample):
    """The real sample's weak pool reads as its README counts it."""
    table = read_weak_labels(real_sample / "weak_labels.csv", real_sample / "weak_images")
    presence = table[list(PRESENCE_COLUMNS)]
    assert len(table) == 636 and int(presence.any(axis=1).sum()) == 599
    assert presence.sum().tolist() == [90, 36, 448, 87]
    assert not set(table["ImageId"]) & {p.name for p in (real_sample / "train_images").iterdir()}


# --- pseudo-labels: the Ignored column ---------------------------------------------------------------


def _pseudo_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ImageId": ["a.jpg", "c.jpg"],
            "rle_1": ["", ""],
            "rle_2": ["", "3 4"],
            "rle_3": ["1 5", ""],
            "rle_4": ["", ""],
            "ignored_1": [True, False],
            "ignored_2": [False, False],
            "ignored_3": [False, False],
            "ignored_4": [False, True],
        }
    )


def test_ignored_classes_round_trip(tmp_path, images_dir):
    path = tmp_path / "round1.csv"
    write_pseudo_labels(_pseudo_table(), path)
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageId,ClassId,EncodedPixels,Ignored" and len(lines) == 1 + 8
    assert lines[1:5] == ["a.jpg,1,,1", "a.jpg,2,,0", "a.jpg,3,1 5,0", "a.jpg,4,,0"]
    assert lines[8] == "c.jpg,4,,1"
    pd.testing.assert_frame_equal(read_pseudo_labels(path, images_dir), _pseudo_table())


def test_a_pseudo_label_file_without_the_column_reads_as_before(tmp_path, images_dir):
    path = tmp_path / "round1.csv"
    write_pseudo_labels(_pseudo_table().drop(columns=list(IGNORED_COLUMNS)), path)
    assert path.read_text().splitlines()[0] == "ImageId,ClassId,EncodedPixels"
    table = read_pseudo_labels(path, images_dir)
    assert list(table.columns) == ["ImageId", "rle_1", "rle_2", "rle_3", "rle_4"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.jpg,1,,2", "line 3: Ignored '2': expected 0, or 1 with an empty EncodedPixels"),
        ("a.jpg,1,,", "line 3: Ignored ''"),
        ("a.jpg,1,1 5,1", "line 3: Ignored '1': expected 0, or 1 with an empty EncodedPixels"),
    ],
)
def test_bad_ignored_values_name_the_line(tmp_path, images_dir, row, message):
    path = _write(tmp_path / "round1.csv", f"ImageId,ClassId,EncodedPixels,Ignored\nb.jpg,1,,0\n{row}\n")
    with pytest.raises(DataError, match=message) as error:
        read_pseudo_labels(path, images_dir)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
