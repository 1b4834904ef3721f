"""Kaggle label and submission files, both formats, read into one table.

Formats:
- current (Kaggle today): ``ImageId,ClassId,EncodedPixels``; train.csv lists only defect rows, so the
  list of images comes from the image folder. Submissions use the header ``ImageId,EncodedPixels,ClassId``
  with four rows per image (empty EncodedPixels = no defect).
- 2019: ``ImageId_ClassId,EncodedPixels``, four rows per image (``abc.jpg_3``), empty = no defect.

Everything downstream works on the *label table*: one row per image, columns ``ImageId`` and
``rle_1`` .. ``rle_4`` ('' = no defect of that class), sorted by ImageId.

Two more files: image-level (weak) labels, ``ImageId,ClassId``, one row per defect class an image of
their folder holds (an image without a row has none), read into a *presence table* (``ImageId`` and
bool ``has_1`` .. ``has_4``); and pseudo-labels, a label file of four rows per image that may add a
column ``Ignored`` (``1``: the class is left out of the loss for that image, its EncodedPixels empty),
read into a label table with bool ``ignored_1`` .. ``ignored_4``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from common_blocks.data import rle
from common_blocks.errors import DataError
from common_blocks.files import atomic_output, read_input

CLASS_IDS = (1, 2, 3, 4)
N_CLASSES = len(CLASS_IDS)
RLE_COLUMNS = ("rle_1", "rle_2", "rle_3", "rle_4")
CURRENT_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels", "ClassId")
COLUMNS_2019 = ("ImageId_ClassId", "EncodedPixels")
WEAK_COLUMNS = ("ImageId", "ClassId")
PRESENCE_COLUMNS = ("has_1", "has_2", "has_3", "has_4")
IGNORED = "Ignored"
IGNORED_COLUMNS = ("ignored_1", "ignored_2", "ignored_3", "ignored_4")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SubmissionFormat = Literal["current", "2019"]


def _line_of(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


def read_csv_file(path: str | os.PathLike, nrows: int | None = None) -> pd.DataFrame:
    """A CSV file as a table of strings (an empty field is ''), ``nrows`` data rows at most, indexed
    by each row's physical line in the file (blank lines and quoted line breaks counted), which
    errors name.

    A file that is not UTF-8 text (binary, UTF-16, Latin-1), empty, that does not parse (an
    unterminated quote) or with a row of more or fewer fields than its header is a DataError naming
    the file and line, as one line. Blank lines are skipped.
    """
    path = Path(path)
    data = read_input(path, DataError)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: UTF-16 text, not a UTF-8 CSV; save the file as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path}, line {_line_of(data, nul)}: a NUL byte: a binary file, not a CSV")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}, line {_line_of(data, error.start)}: not UTF-8 text (byte 0x{data[error.start]:02x}), "
            "not a CSV"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: empty file, expected a CSV header")
    # A field may be as long as the file (a full-image RLE runs past the csv module's 128 KiB default).
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] = []
    rows: list[list[str]] = []
    lines: list[int] = []
    start = header_line = 1  # the physical line the next row starts on; the header's
    try:
        for fields in reader:  # a blank line is an empty list
            if fields and not header:
                header, header_line = fields, start
            elif fields:
                if nrows is not None and len(rows) >= nrows:
                    break
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}, line {start}: {len(fields)} fields where {len(header)} were expected "
                        f"({','.join(header)})"
                    )
                rows.append(fields)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path}, line {start}: not a readable CSV ({error})") from None
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise DataError(f"{path}, line {header_line}: column {twice[0]!r} appears twice in the header")
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, name="line", dtype=np.int64), dtype=str)


def detect_format(columns: Iterable[str], path: Path) -> SubmissionFormat:
    """Tell the format from the header; the error names the missing columns."""
    present = set(columns)
    if set(COLUMNS_2019) <= present:
        return "2019"
    if set(CURRENT_COLUMNS) <= present:
        return "current"
    if "ImageId_ClassId" in present:
        missing = sorted(set(COLUMNS_2019) - present)
    else:
        missing = sorted(set(CURRENT_COLUMNS) - present)
    raise DataError(
        f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(CURRENT_COLUMNS)} "
        f"or {','.join(COLUMNS_2019)}, found {','.join(columns)}"
    )


def check_image_ids(image_ids: pd.Series, path: Path, lines: np.ndarray) -> None:
    """Every ImageId is a bare file name: not empty, no ``/`` or ``\\``, not ``.`` or ``..`` (so not
    absolute either), so that no label or submission file makes a reader open, or a submission name,
    a file outside its image folder. A DataError naming the first bad one's line otherwise."""
    text = image_ids.astype(str)
    empty = (text.str.strip() == "").to_numpy()
    pathlike = (text.str.contains(r"[/\\]") | text.isin([".", ".."])).to_numpy()
    bad = empty | pathlike
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        problem = (
            "empty ImageId"
            if empty[first]
            else f"ImageId {text.iloc[first]!r} is not a bare file name (no /, \\, . or ..)"
        )
        raise DataError(f"{path}, line {lines[first]}: {problem}")


def read_label_rows(path: str | os.PathLike) -> pd.DataFrame:
    """Read a label or submission CSV of either format into long rows, fully validated.

    Returns columns ``ImageId``, ``ClassId`` (int), ``EncodedPixels`` and ``line`` (the row's physical
    line in the file, for error messages). Rows with empty EncodedPixels are kept: they list an image.
    """
    path = Path(path)
    return _label_rows(read_csv_file(path), path)


def _class_ids(class_text: pd.Series, path: Path, lines: np.ndarray) -> np.ndarray:
    """Class ids as ints: exactly the digits 1-4 ("3.0", " 3" or "+3" are not class ids: a label file
    is strict); a DataError naming the first other value's line."""
    bad_class = ~class_text.isin([str(class_id) for class_id in CLASS_IDS])
    if bad_class.any():
        bad = int(np.flatnonzero(bad_class.to_numpy())[0])
        raise DataError(f"{path}, line {lines[bad]}: class {class_text.iloc[bad]!r} is not one of 1, 2, 3, 4")
    return class_text.astype(np.int64).to_numpy()


def _check_unique(rows: pd.DataFrame, path: Path) -> None:
    """One row per (image, class): a DataError naming the second row's line and the first's."""
    duplicated = rows.duplicated(["ImageId", "ClassId"], keep=False)
    if duplicated.any():
        first, second = rows.loc[duplicated, ["ImageId", "ClassId", "line"]].head(2).itertuples(index=False)
        raise DataError(
            f"{path}, line {second.line}: duplicate row for image {second.ImageId} class {second.ClassId} "
            f"(first at line {first.line})"
        )


def _label_rows(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``read_label_rows`` of a file already read by ``read_csv_file``."""
    fmt = detect_format(frame.columns, path)
    lines = frame.index.to_numpy()
    if fmt == "2019":
        parts = frame["ImageId_ClassId"].str.rsplit("_", n=1, expand=True)
        if parts.shape[1] < 2 or parts[1].isna().any():
            bad = int(np.flatnonzero(parts.reindex(columns=[0, 1])[1].isna().to_numpy())[0])
            raise DataError(
                f"{path}, line {lines[bad]}: ImageId_ClassId {frame['ImageId_ClassId'].iloc[bad]!r} "
                "is not of the form <image>_<class>"
            )
        image_ids, class_text = parts[0], parts[1]
    else:
        image_ids, class_text = frame["ImageId"], frame["ClassId"]
    class_ids = _class_ids(class_text, path, lines)
    check_image_ids(image_ids, path, lines)
    rows = pd.DataFrame(
        {
            "ImageId": image_ids.to_numpy(),
            "ClassId": class_ids,
            "EncodedPixels": frame["EncodedPixels"].str.strip().to_numpy(),
            "line": lines,
        }
    )
    _check_unique(rows, path)
    for image_id, class_id, encoded, line in rows.itertuples(index=False):
        try:
            rle.check(encoded)
        except ValueError as error:
            raise DataError(f"{path}, line {line}: image {image_id} class {class_id}: {error}") from None
    return rows


def list_images(images_dir: str | os.PathLike) -> list[str]:
    """Sorted image file names of a folder; an error when it is missing or holds no image."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise DataError(f"{folder}: no images (.jpg, .jpeg, .png) in the folder")
    return names


def rows_to_table(rows: pd.DataFrame, image_ids: Sequence[str], source: str, universe: str) -> pd.DataFrame:
    """Spread long rows over the given images; a row for an image outside them is an error."""
    table = pd.DataFrame({"ImageId": sorted(image_ids)})
    known = set(table["ImageId"])
    unknown = ~rows["ImageId"].isin(known)
    if unknown.any():
        row = rows.loc[unknown].iloc[0]
        raise DataError(f"{source}, line {row['line']}: image {row['ImageId']} is not in {universe}")
    for class_id, column in zip(CLASS_IDS, RLE_COLUMNS, strict=True):
        of_class = rows[rows["ClassId"] == class_id]
        table[column] = table["ImageId"].map(dict(zip(of_class["ImageId"], of_class["EncodedPixels"])))
    return table.fillna("").astype(str)


def read_labels(csv_path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read labels of either format into the label table.

    With ``images_dir`` the images are those of the folder (defect-free ones included) and a label
    for an image not in it is an error. Without it they are the images the file names, which for
    the current format are only the images with a row.
    """
    rows = read_label_rows(csv_path)
    if images_dir is None:
        return rows_to_table(rows, rows["ImageId"].unique(), str(csv_path), "the file")
    return rows_to_table(rows, list_images(images_dir), str(csv_path), f"the image folder {images_dir}")


def empty_table(image_ids: Sequence[str]) -> pd.DataFrame:
    """A label table with no defect on any of the images."""
    return pd.DataFrame({"ImageId": list(image_ids), **{column: "" for column in RLE_COLUMNS}}).astype(str)


def class_presence(table: pd.DataFrame) -> np.ndarray:
    """(N, 4) bool: which classes each image has."""
    return np.stack([table[column].to_numpy() != "" for column in RLE_COLUMNS], axis=1)


def table_to_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Long rows ``ImageId, ClassId, EncodedPixels``, four per image, image-major."""
    long = table.melt(
        id_vars="ImageId", value_vars=list(RLE_COLUMNS), var_name="ClassId", value_name="EncodedPixels"
    )
    long["ClassId"] = long["ClassId"].str.removeprefix("rle_").astype(int)
    return long.sort_values(["ImageId", "ClassId"], kind="stable").reset_index(drop=True)


def write_labels(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a label table as a current-format train.csv (defect rows only), atomically."""
    rows = table_to_rows(table)
    rows = rows[rows["EncodedPixels"] != ""]
    with atomic_output(path) as temporary:
        rows.to_csv(temporary, columns=list(CURRENT_COLUMNS), index=False)


def write_submission(table: pd.DataFrame, path: str | os.PathLike, fmt: SubmissionFormat = "current") -> None:
    """Write a label table as a submission, four rows per image, atomically."""
    rows = table_to_rows(table)
    with atomic_output(path) as temporary:
        if fmt == "current":
            rows.to_csv(temporary, columns=list(SUBMISSION_COLUMNS), index=False)
        elif fmt == "2019":
            pd.DataFrame(
                {
                    "ImageId_ClassId": rows["ImageId"] + "_" + rows["ClassId"].astype(str),
                    "EncodedPixels": rows["EncodedPixels"],
                }
            ).to_csv(temporary, index=False)
        else:
            raise ValueError(f"unknown submission format {fmt!r}; expected 'current' or '2019'")


def read_image_ids(sample_submission: str | os.PathLike) -> list[str]:
    """Test image ids in the order of a Kaggle sample_submission.csv (either format, any ClassId)."""
    path = Path(sample_submission)
    frame = read_csv_file(path)
    if "ImageId" in frame.columns:
        ids = frame["ImageId"]
    elif "ImageId_ClassId" in frame.columns:
        ids = frame["ImageId_ClassId"].str.rsplit("_", n=1).str[0]
    else:
        raise DataError(f"{path}: missing column ImageId (or ImageId_ClassId)")
    check_image_ids(ids, path, np.arange(len(frame)) + 2)
    return list(dict.fromkeys(ids))


def read_weak_labels(csv_path: str | os.PathLike, images_dir: str | os.PathLike) -> pd.DataFrame:
    """Image-level labels as a presence table over every image of ``images_dir``: ``ImageId`` and bool
    ``has_1`` .. ``has_4`` (an image without a row holds no defect), sorted by ImageId.

    Strict, as the label readers: the header is exactly ``ImageId,ClassId`` (a ``train.csv`` given
    here would otherwise pass for image labels), ImageIds are bare file names, classes the digits
    1-4, one row per (image, class), and every image listed is in the folder; each error a DataError
    naming the file and line.
    """
    path = Path(csv_path)
    frame = read_csv_file(path)
    if tuple(frame.columns) != WEAK_COLUMNS:
        raise DataError(
            f"{path}: expected the header {','.join(WEAK_COLUMNS)} (image-level labels), "
            f"found {','.join(frame.columns)}"
        )
    lines = frame.index.to_numpy()
    class_ids = _class_ids(frame["ClassId"], path, lines)
    check_image_ids(frame["ImageId"], path, lines)
    rows = pd.DataFrame({"ImageId": frame["ImageId"].to_numpy(), "ClassId": class_ids, "line": lines})
    _check_unique(rows, path)
    images = list_images(images_dir)
    missing = ~rows["ImageId"].isin(set(images))
    if missing.any():
        row = rows.loc[missing].iloc[0]
        raise DataError(
            f"{path}, line {row['line']}: image {row['ImageId']} is not in the image folder {images_dir}"
        )
    table = pd.DataFrame({"ImageId": images})
    for class_id, column in zip(CLASS_IDS, PRESENCE_COLUMNS, strict=True):
        table[column] = table["ImageId"].isin(set(rows.loc[rows["ClassId"] == class_id, "ImageId"]))
    return table


def write_weak_labels(presence: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a presence table as image-level labels (a row per class an image holds), atomically."""
    held = presence.melt(id_vars="ImageId", value_vars=list(PRESENCE_COLUMNS), var_name="ClassId")
    held = held[held["value"].astype(bool)]
    held = held.assign(ClassId=held["ClassId"].str.removeprefix("has_").astype(int))
    with atomic_output(path) as temporary:
        held.sort_values(["ImageId", "ClassId"]).to_csv(temporary, columns=list(WEAK_COLUMNS), index=False)


def write_pseudo_labels(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the kept images' label table, four rows per image (header only when none), atomically;
    with the column ``Ignored`` (0 or 1) when the table has ``ignored_1`` .. ``ignored_4``."""
    rows = table_to_rows(table)
    columns = list(CURRENT_COLUMNS)
    if IGNORED_COLUMNS[0] in table.columns:
        flags = table.set_index("ImageId")[list(IGNORED_COLUMNS)]
        at = flags.index.get_indexer(rows["ImageId"]), rows["ClassId"].to_numpy() - 1
        rows[IGNORED] = flags.to_numpy(dtype=bool)[at].astype(int)
        columns.append(IGNORED)
    with atomic_output(path) as temporary:
        rows.to_csv(temporary, columns=columns, index=False)


def read_pseudo_labels(csv_path: str | os.PathLike, images_dir: str | os.PathLike) -> pd.DataFrame:
    """The label table of the images the file lists; a row naming an image missing from ``images_dir``
    is a DataError naming its line. A file with the column ``Ignored`` adds ``ignored_1`` ..
    ``ignored_4`` (bool); an ignored class's EncodedPixels must be empty.

    Not ``formats.read_labels(csv, images_dir)``: that labels every image of the folder, and would
    take the test images the selection rejected for defect-free ones.
    """
    path = Path(csv_path)
    frame = read_csv_file(path)
    rows = _label_rows(frame, path)
    table = rows_to_table(rows, list_images(images_dir), str(path), f"the image folder {images_dir}")
    table = table[table["ImageId"].isin(set(rows["ImageId"]))].reset_index(drop=True)
    if IGNORED not in frame.columns:
        return table
    flags = frame[IGNORED].to_numpy()
    bad = ~np.isin(flags, ["0", "1"]) | ((flags == "1") & (rows["EncodedPixels"].to_numpy() != ""))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {rows['line'].iloc[first]}: {IGNORED} {flags[first]!r}: expected 0, or 1 with "
            "an empty EncodedPixels (the class left out of the loss)"
        )
    ignored = rows[flags == "1"]
    for class_id, column in zip(CLASS_IDS, IGNORED_COLUMNS, strict=True):
        table[column] = table["ImageId"].isin(set(ignored.loc[ignored["ClassId"] == class_id, "ImageId"]))
    return table
