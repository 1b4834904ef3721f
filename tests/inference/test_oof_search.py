"""``severstal oof``: the thresholds, the leaderboard and the local CV it writes, and inference with
what it tuned, over untrained debug runs."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from common_blocks.errors import ConfigError
from common_blocks.evaluation.metric import score_tables, summarize
from common_blocks.evaluation.oof_stats import OofStats
from common_blocks.evaluation.threshold_search import SearchResult, evaluate
from common_blocks.inference.predictor import (
    build_predictor,
)
from common_blocks.inference.submission import (
    ReadTolerantDataset,
    predict_stream,
)
from common_blocks.training.config import load_config
from common_blocks.training.folds_file import labelled_folds
from tests.cli_contract import run_in_process
from tests.debug_runs import debug_ensemble
from tests.repository import DEBUG, DEBUG_GATE


def test_oof_writes_thresholds_and_a_leaderboard_row_with_the_evaluated_cv(oof_run, data):
    cfg, stdout, args = oof_run
    stats, result = OofStats.load(cfg.oof_path), SearchResult.load(cfg.thresholds_path)
    summary = summarize(evaluate(stats, result.config))
    folds = pd.read_csv(data / "folds.csv")
    assert sorted(stats.image_ids) == sorted(folds.loc[folds["fold"].isin([0, 1]), "ImageId"])
    assert stats.has_gate and summary.score == pytest.approx(result.score, abs=1e-12)
    assert f"local CV score {summary.score:.5f} over {stats.n_images} images" in stdout
    board = pd.read_csv(cfg.leaderboard_path)
    row = board.iloc[0]
    assert row["name"] == "ensemble_debug" and row["members"] == "debug[0,1]x1" and row["tta"] == "none+hflip"
    assert row["score"] == pytest.approx(summary.score, abs=1e-6)
    for class_id, score in summary.per_class.items():
        assert row[f"score_{class_id}"] == pytest.approx(score, abs=1e-6)
    code, _, stderr = run_in_process(*args, "--set", "tta=[none]")
    assert code == 0, stderr
    board = pd.read_csv(cfg.leaderboard_path)
    assert len(board) == 2 and board["tta"].tolist() == ["none+hflip", "none"]
    assert board["config_hash"].nunique() == 2
    assert board["backend"].tolist() == ["torch", "torch"] and board["precision"].tolist() == ["fp32", "fp32"]


def test_a_leaderboard_of_an_earlier_version_gains_the_new_columns(oof_run, tmp_path):
    """Its rows are kept as they were, with the columns added since empty; the new row has them all."""
    cfg, _, args = oof_run
    earlier = pd.read_csv(cfg.leaderboard_path, dtype=str).iloc[:1, :12]
    board_path = tmp_path / "leaderboard.csv"
    earlier.to_csv(board_path, index=False)
    code, _, stderr = run_in_process(*args, "--set", f"leaderboard={board_path}", "--set", "tta=[none]")
    assert code == 0, stderr
    board = pd.read_csv(board_path, dtype=str, keep_default_na=False)
    assert list(board.columns) == [*earlier.columns, "backend", "precision"]
    assert board.iloc[0, :12].tolist() == earlier.iloc[0].tolist()
    assert board["backend"].tolist() == ["", "torch"] and board["precision"].tolist() == ["", "fp32"]


def test_tuned_thresholds_give_inference_the_score_the_search_promised(oof_run, data):
    """Fold 0's images through the full inference path, with the tuned post-processing, score what
    the OOF statistics say that post-processing scores on them."""
    cfg, _, _ = oof_run
    postprocess, message = cfg.resolved_postprocess()
    assert postprocess == SearchResult.load(cfg.thresholds_path).config and "tuned" in message
    predictor = build_predictor(cfg, [0], postprocess=postprocess)
    table = labelled_folds(load_config(DEBUG, [f"data.data_dir={data}"]))
    valid = table[table["fold"] == 0].reset_index(drop=True)
    dataset = ReadTolerantDataset(valid, data / "train_images", with_masks=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    predicted = pd.DataFrame(
        [(p.image_id, *p.rles) for p in predict_stream(predictor, loader)], columns=valid.columns[:5]
    )
    stats = OofStats.load(cfg.oof_path)
    fold0 = stats.folds == 0
    fold0_stats = OofStats(
        **{name: getattr(stats, name) for name in ("thresholds", "min_sizes", "fill_holes")},
        **{name: getattr(stats, name)[fold0] for name in ("image_ids", "folds", "area", "intersection")},
        truth_area=stats.truth_area[fold0],
        gate=stats.gate[fold0],
    )
    promised = summarize(evaluate(fold0_stats, postprocess))
    assert summarize(score_tables(predicted, valid)).score == pytest.approx(promised.score, abs=1e-9)


def test_oof_needs_the_same_folds_everywhere(tmp_path, runs, data):
    from common_blocks.inference.oof_search import run_oof

    cfg = debug_ensemble(tmp_path, runs, data, f"gate={{config: {DEBUG_GATE}, folds: [0]}}")
    with pytest.raises(ConfigError, match=r"same folds .* debug \[0, 1\], debug_classifier \[0\]"):
        run_oof(cfg)
    assert np.all([not (tmp_path / name).exists() for name in ("thresholds.json", "leaderboard.csv")])


def test_report_of_the_oof_run_references_only_existing_files(oof_run, tmp_path):

    _, _, args = oof_run
    code, stdout, stderr = run_in_process("report", *args[1:3], "--out", tmp_path / "report", "--worst", 2)
    assert code == 0, stderr
    page = (tmp_path / "report" / "index.html").read_text()
    referenced = re.findall(r'(?:src|href)="([^"#:]+)"', page)
    assert any(name.endswith(".png") for name in referenced)
    assert all((tmp_path / "report" / name).is_file() for name in referenced)
    assert "worst" in page.lower()
