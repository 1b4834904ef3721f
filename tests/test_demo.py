"""``make demo``'s script end to end at a small size: every step succeeds and writes what it announces.
The whole main job is here (data, folds, training, OOF tuning, submission, its score, the report), so
a command that starts refusing what the demo asks of it fails this test, not a user's first run."""

from __future__ import annotations

import sys

import pytest

from common_blocks.run_folder import RunPaths
from tests.repository import run_make

# 4 images per fold, one epoch each: the test is about the steps fitting together, not about scores
SMALL = {"DEMO_N_TRAIN": "16", "DEMO_N_TEST": "4", "DEMO_SEGMENTER_EPOCHS": "1", "DEMO_GATE_EPOCHS": "1"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_demo_runs_end_to_end_and_writes_what_it_announces(tmp_path):
    """Through ``make demo`` as a user runs it, into folders whose paths hold a space (each variable is
    one word to the Makefile and the script); ``-o`` takes the venv as installed: the test's Python is."""
    data, runs, report = tmp_path / "my data", tmp_path / "my runs", tmp_path / "my report"
    variables = {"PY": sys.executable, "DEMO_DIR": data, "RUNS_DIR": runs, "REPORT_DIR": report}
    result = run_make("demo", variables, SMALL)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    for config in ("debug", "debug_classifier"):
        for fold in (0, 1):
            assert RunPaths.of(runs, config, fold).summary.is_file()
    assert (runs / "ensemble_debug" / "thresholds.json").is_file() and (
        tmp_path / "leaderboard.csv"
    ).is_file()
    assert (runs / "local_cv.txt").read_text().startswith("local CV score ")
    assert (runs / "submission_score.txt").read_text().startswith("score ")
    assert "over 4 images" in (runs / "submission_score.txt").read_text()  # every test image submitted
    assert (report / "index.html").is_file()
    assert result.stdout.rstrip().splitlines()[-2] == f"report: {report}/index.html"
