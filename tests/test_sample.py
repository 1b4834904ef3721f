"""``make sample``'s script end to end at a tiny size on synthetic data with a weak pool: folds with a
local test split, the sweep (every run, then the OOF search), the local test split predicted and
scored, a class-aware pseudo-label round on the weak pool with every run trained again and scored
against the round before, the submission and the report. The real sample takes hours; this is about
the steps fitting together."""

from __future__ import annotations

import sys

import pytest

from common_blocks.data.folds import TEST_FOLD, read_folds
from common_blocks.data.synthetic import generate
from common_blocks.run_folder import RunPaths
from tests.repository import DEBUG, DEBUG_GATE, run_make


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_sample_pipeline_runs_end_to_end_and_scores_the_local_test_split(tmp_path):
    data, runs, report = tmp_path / "my data", tmp_path / "my runs", tmp_path / "my report"
    generate(data, n_train=12, n_test=2, seed=0, workers=1, n_weak=6)
    ensemble = tmp_path / "ensemble_tiny.yaml"
    ensemble.write_text(
        f"runs_dir: {runs}\ndata_dir: {data}\n"
        f"members:\n  - {{config: {DEBUG}, folds: [0, 1]}}\n"
        f"gate: {{config: {DEBUG_GATE}, folds: [0, 1]}}\n"
        "tta: [none]\nsearch:\n  min_areas: [0, 400]\n  gates: [0.0, 0.5]\n  gate_factors: [null]\n"
    )
    variables = {
        "PY": sys.executable,
        "SAMPLE_DIR": data,
        "SAMPLE_RUNS_DIR": runs,
        "SAMPLE_REPORT_DIR": report,
    }
    small = {
        "SAMPLE_CONFIG": str(ensemble),
        "SAMPLE_N_FOLDS": "2",
        "SAMPLE_PSEUDO_ROUNDS": "1",
        "SAMPLE_SET": "trainer.max_epochs=1 augment.crop_height=null augment.crop_width=null",
    }
    result = run_make("sample", variables, small)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    folds = read_folds(runs / "folds.csv")
    held_out = set(folds.loc[folds["fold"] == TEST_FOLD, "ImageId"])
    assert len(held_out) == 2  # a fifth of 12, rounded down
    for round_dir in (runs / "round0", runs / "round1"):
        for config in (DEBUG, DEBUG_GATE):
            for fold in (0, 1):
                assert RunPaths.of(round_dir, config.stem, fold).summary.is_file()
        # the local test split is predicted and scored, and only it
        predicted = (round_dir / "local_test.csv").read_text()
        assert all(image_id in predicted for image_id in held_out)
        assert (round_dir / "local_cv.txt").read_text().count("local CV score ") == 1
    assert "over 2 images" in (runs / "round0" / "local_test_score.txt").read_text()
    # round 1 learnt from the class-aware labels of the weak pool, and is scored against round 0
    pseudo = (runs / "pseudo" / "round1.csv").read_text().splitlines()
    assert pseudo[0] == "ImageId,ClassId,EncodedPixels,Ignored"
    weak_pool = {path.name for path in (data / "weak_images").iterdir()}
    assert pseudo[1:] and {line.split(",")[0] for line in pseudo[1:]} <= weak_pool
    against = (runs / "round1" / "local_test_score.txt").read_text().splitlines()[-1]
    assert against.startswith(f"against {runs / 'round0' / 'local_test.csv'}: ") and "90% interval" in against
    assert (runs / "submission.csv").is_file() and (report / "index.html").is_file()
    assert result.stdout.rstrip().splitlines()[-1].startswith("sample finished in ")
