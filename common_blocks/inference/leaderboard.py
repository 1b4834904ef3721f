"""The leaderboard: one CSV row per ``severstal oof`` run (time, config hash, members, local CV
overall and per class, backend, precision), appended, never rewritten in place.

Its columns are versioned by position: a later version only appends columns, so a file written by an
earlier version is read with the new columns empty and the next row is appended to it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from common_blocks.data.formats import CLASS_IDS
from common_blocks.errors import DataError

LEADERBOARD_COLUMNS = (
    "time",
    "config_hash",
    "name",
    "members",
    "gate",
    "tta",
    "n_images",
    "score",
    *(f"score_{c}" for c in CLASS_IDS),
    "backend",
    "precision",
)
# A leaderboard written by an earlier version has the first columns only: its rows keep them and
# the columns added since are appended, empty for those rows. New columns go at the end.
_FIRST_COLUMNS = 12


def read_leaderboard(path: str | os.PathLike) -> pd.DataFrame:
    """The leaderboard's rows (none when the file does not exist yet), as strings, in
    ``LEADERBOARD_COLUMNS`` (an earlier version's file, whose columns are the first of them, gets the
    later ones empty); a file that is not readable, not CSV or has other columns is an error naming
    it, never merged into."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS), dtype=str)
    if not path.is_file():
        raise DataError(f"{path}: the leaderboard is not a file")
    try:
        board = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: not a readable leaderboard CSV ({reason})") from None
    columns = tuple(board.columns)
    if len(columns) < _FIRST_COLUMNS or columns != LEADERBOARD_COLUMNS[: len(columns)]:
        raise DataError(
            f"{path}: not a leaderboard of this pipeline (columns {', '.join(map(str, board.columns))}; "
            f"expected {', '.join(LEADERBOARD_COLUMNS)}); move it away or set `leaderboard:` to another file"
        )
    return board.reindex(columns=list(LEADERBOARD_COLUMNS), fill_value="")


def with_row(board: pd.DataFrame, row: dict[str, object]) -> pd.DataFrame:
    """``board`` with ``row`` (keyed by exactly ``LEADERBOARD_COLUMNS``) appended, as strings."""
    if tuple(row) != LEADERBOARD_COLUMNS:
        raise ValueError(f"leaderboard row with keys {list(row)}, expected {LEADERBOARD_COLUMNS}")
    new = pd.DataFrame([{key: str(value) for key, value in row.items()}])
    return new if board.empty else pd.concat([board, new], ignore_index=True)
