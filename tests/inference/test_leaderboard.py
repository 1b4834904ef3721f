"""The leaderboard file: an earlier version's columns read with the later ones empty, a row appended
with every column, anything else refused with its file named."""

from __future__ import annotations

import pandas as pd
import pytest

from common_blocks.errors import DataError
from common_blocks.inference.leaderboard import LEADERBOARD_COLUMNS, read_leaderboard, with_row


def _row(score: str) -> dict[str, str]:
    return {column: score if column == "score" else column for column in LEADERBOARD_COLUMNS}


def test_no_file_is_an_empty_board_and_a_row_appends(tmp_path):
    board = with_row(read_leaderboard(tmp_path / "leaderboard.csv"), _row("0.9"))
    assert list(board.columns) == list(LEADERBOARD_COLUMNS) and board["score"].tolist() == ["0.9"]


def test_an_earlier_versions_file_keeps_its_rows_and_gains_the_later_columns(tmp_path):
    path = tmp_path / "leaderboard.csv"
    earlier = LEADERBOARD_COLUMNS[:12]  # the columns before backend and precision were added
    pd.DataFrame([{column: "old" for column in earlier}]).to_csv(path, index=False)
    board = with_row(read_leaderboard(path), _row("0.9"))
    assert board["score"].tolist() == ["old", "0.9"]
    assert board["backend"].tolist() == ["", "backend"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a,b\n1,2\n", "not a leaderboard of this pipeline"),
        ("", "not a readable leaderboard CSV"),
    ],
)
def test_another_file_is_refused_naming_it(tmp_path, text, fragment):
    path = tmp_path / "leaderboard.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=fragment) as error:
        read_leaderboard(path)
    assert str(path) in str(error.value)


def test_a_row_must_have_every_column():
    with pytest.raises(ValueError, match="expected"):
        with_row(pd.DataFrame(), {"score": "1"})
