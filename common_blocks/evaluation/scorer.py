"""Offline scorer: any submission against any labels, either format on either side."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from common_blocks.data.formats import (
    detect_format,
    read_csv_file,
    read_label_rows,
    read_labels,
    rows_to_table,
)
from common_blocks.errors import DataError
from common_blocks.evaluation.metric import ScoreSummary, score_tables, summarize


def read_truth(truth: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The true label table; the current format lists only defect rows, so it needs the image folder."""
    truth = Path(truth)
    if images_dir is None:
        header = read_csv_file(truth, nrows=0).columns  # unreadable or missing: one DataError line
        if detect_format(header, truth) == "current":
            raise DataError(
                f"{truth}: the current format lists only images with a defect; "
                "pass --images DIR so that defect-free images are scored too"
            )
    return read_labels(truth, images_dir)


def score_submission(
    submission: str | os.PathLike, truth: str | os.PathLike, images_dir: str | os.PathLike | None = None
) -> ScoreSummary:
    """Competition score of a submission file; a missing (image, class) row counts as empty."""
    truth_table = read_truth(truth, images_dir)
    universe = f"the image folder {images_dir}" if images_dir is not None else f"the truth {truth}"
    rows = read_label_rows(submission)
    predicted = rows_to_table(rows, truth_table["ImageId"], str(submission), universe)
    return summarize(score_tables(predicted, truth_table))
