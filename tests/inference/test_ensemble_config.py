"""The ensemble config: shipped files validate, bad values name their key, paths resolve."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from common_blocks.errors import ConfigError
from common_blocks.evaluation.oof_stats import OofStats
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.evaluation.threshold_search import SearchResult, search
from common_blocks.inference.ensemble_config import load_ensemble_config
from tests.repository import ROOT

ENSEMBLE_CONFIGS = sorted((ROOT / "configs").glob("ensemble*.yaml"))


@pytest.fixture(autouse=True)
def _in_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # member configs are relative to the working directory


@pytest.mark.parametrize("path", ENSEMBLE_CONFIGS, ids=lambda p: p.stem)
def test_shipped_ensemble_configs_validate(path):
    cfg = load_ensemble_config(path)
    assert cfg.name == path.stem
    assert all(member.name for member in cfg.members) and cfg.gate is not None


def test_debug_ensemble_is_what_the_demo_trains():
    cfg = load_ensemble_config(ROOT / "configs" / "ensemble_debug.yaml")
    assert [(m.name, m.folds) for m in cfg.members] == [("debug", [0, 1])]
    assert (cfg.gate.name, cfg.gate.folds) == ("debug_classifier", [0, 1])
    assert cfg.runs_dir == Path("runs/demo") and cfg.data_dir == Path("data/synthetic")
    assert cfg.members[0].checkpoint_path(cfg.runs_dir, 1) == Path("runs/demo/debug/fold1/averaged.ckpt")
    assert cfg.gate.checkpoint_path(cfg.runs_dir, 1) == Path("runs/demo/debug_classifier/fold1/best.ckpt")
    assert cfg.oof_path == cfg.thresholds_path.with_name("oof.npz")
    assert cfg.leaderboard_path == Path("runs/leaderboard.csv")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["members=[]"], "members: List should have at least 1 item"),
        (["members=[{config: debug, folds: [0], wieght: 2}]"], "unknown key members.0.wieght"),
        (
            ["members=[{config: debug, folds: [0], weight: 0}]"],
            "members.0.weight: Input should be greater than 0",
        ),
        (
            ["members=[{config: debug, folds: [1, 1]}]"],
            "members.0.folds: Value error, expected distinct fold",
        ),
        (
            ["members=[{config: configs/no.yaml, folds: [0]}]"],
            "members.0.config: Value error, configs/no.yaml: config",
        ),
        (["members=[{config: runs/debug, folds: [0]}]"], "expected configs/NAME.yaml or a run name"),
        (["tta=[none,rot90]"], "tta.1: Input should be 'none', 'hflip' or 'vflip'"),
        (["tta=[none,none]"], "tta: Value error, each augmentation at most once"),
        (["average=median"], "average: Input should be 'probabilities' or 'logits'"),
        (["gate.threshold=1.5"], "gate.threshold: Input should be less than or equal to 1"),
        (
            ["search.thresholds=[0.5,0.4]"],
            "search.thresholds: Value error, values must be strictly increasing",
        ),
        (["postprocess.classes=[{treshold: 0.5}, {}, {}, {}]"], "unknown key postprocess.classes.0.treshold"),
    ],
)
def test_bad_values_name_the_key_path(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_ensemble_config(ROOT / "configs" / "ensemble_debug.yaml", overrides)


def test_a_member_may_be_named_by_run_name_or_config_file(tmp_path):
    config = tmp_path / "renamed.yaml"
    config.write_text("name: custom_name\nmodel: {type: Unet}\n")
    cfg = load_ensemble_config(
        ROOT / "configs" / "ensemble_debug.yaml",
        [f"members=[{{config: {config}, folds: [0]}}, {{config: some_run, folds: [0]}}]"],
    )
    assert [m.name for m in cfg.members] == ["custom_name", "some_run"]


def _search_result(config: PostprocessConfig, score: float) -> SearchResult:
    """A search result as severstal oof writes it, with the given outcome."""
    stats = OofStats(
        image_ids=["a.jpg"],
        folds=[0],
        thresholds=[0.5, 0.7],
        min_sizes=[0],
        fill_holes=(False,) * 4,
        area=np.zeros((1, 4, 2, 1), np.uint32),
        intersection=np.zeros((1, 4, 2, 1), np.uint32),
        truth_area=np.zeros((1, 4), np.uint32),
        gate=np.full((1, 4), 0.5, np.float32),
    )
    return dataclasses.replace(search(stats, [0, 300], [0.0, 0.4]), config=config, score=score)


def test_tuned_thresholds_win_over_the_defaults_and_say_so(tmp_path):
    thresholds = tmp_path / "thresholds.json"
    debug = ROOT / "configs" / "ensemble_debug.yaml"
    cfg = load_ensemble_config(debug, [f"postprocess.thresholds_file={thresholds}"])
    config, message = cfg.resolved_postprocess()
    assert config == PostprocessConfig() and "default post-processing" in message and "not found" in message
    tuned = PostprocessConfig(classes=(ClassPostprocess(threshold=0.7, min_area=300, gate=0.4),) * 4)
    _search_result(tuned, 0.9).save(thresholds)
    config, message = cfg.resolved_postprocess()
    assert config == tuned and f"tuned post-processing from {thresholds} (local CV 0.90000)" in message
    gated = load_ensemble_config(debug, [f"postprocess.thresholds_file={thresholds}", "gate.threshold=0.6"])
    config, message = gated.resolved_postprocess()
    assert (
        all(c.gate == 0.6 and c.threshold == 0.7 for c in config.classes) and "gate threshold 0.6" in message
    )
