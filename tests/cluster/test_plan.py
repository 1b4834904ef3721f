"""The sweep's plan: bad configs, a run folder that cannot be continued and a last.ckpt of another
model are one error line before any job; a segmenter with a class head may be the gate."""

from __future__ import annotations

import pytest
import yaml

from common_blocks.cluster.plan import plan_sweep
from common_blocks.run_folder import RunPaths
from common_blocks.training.config import load_config
from tests.cluster.sweeps import (
    DEBUG,
    GATE,
    QUICK,
    ensemble_file,
    refused,
)


def test_bad_configs_are_one_error_line_before_any_job(tmp_path, synthetic_data):
    args = ("--data-dir", synthetic_data)
    assert "trainer.max_epochs" in refused(tmp_path, *args, "--set", "trainer.max_epochs=zero")
    assert "names a trained run" in refused(tmp_path, *args, members=[{"config": "debug", "folds": [0]}])
    assert "fold 7 is out of range" in refused(
        tmp_path, *args, members=[{"config": str(DEBUG), "folds": [0, 7]}]
    )
    assert "is a classifier; it belongs in gate" in refused(
        tmp_path, *args, members=[{"config": str(GATE), "folds": [0, 1]}]
    )
    assert "gate: debug is neither a classifier nor a segmenter with a class head" in refused(
        tmp_path, *args, gate=DEBUG
    )
    assert "data directory not found" in refused(tmp_path, "--data-dir", tmp_path / "nowhere")


def test_a_segmenter_with_a_class_head_may_be_the_sweeps_gate(tmp_path, synthetic_data):
    tree = {**yaml.safe_load(DEBUG.read_text()), "name": "debug_head", "class_head": {}}
    head = tmp_path / "debug_head.yaml"
    head.write_text(yaml.safe_dump(tree))
    plan = plan_sweep(
        ensemble_file(tmp_path, synthetic_data, [{"config": str(head), "folds": [0, 1]}], gate=head)
    )
    assert sorted((run.job.cfg.name, run.job.fold) for run in plan.runs) == [
        ("debug_head", 0),
        ("debug_head", 1),
    ]


def test_a_run_folder_that_cannot_be_continued_is_refused_before_any_job(tmp_path, synthetic_data):
    paths = RunPaths.of(tmp_path / "runs", "debug", 1)
    paths.root.mkdir(parents=True)
    paths.last.write_bytes(b"not a checkpoint")
    line = refused(tmp_path, "--data-dir", synthetic_data)
    assert "debug/fold1: cannot continue the run" in line and "--overwrite" in line
    assert paths.last.read_bytes() == b"not a checkpoint"


@pytest.mark.slow
def test_a_last_ckpt_of_another_model_is_refused_before_any_job(tmp_path, synthetic_data):
    """A classifier's last.ckpt in the segmenter's run folder: --resume would refuse it, so the sweep
    refuses it before queueing anything, in one short line that names the file."""
    from common_blocks.training.runner import train_fold

    classifier = load_config(GATE, [f"data.data_dir={synthetic_data}", *QUICK])
    train_fold(classifier, 1, tmp_path / "other")
    paths = RunPaths.of(tmp_path / "runs", "debug", 1)
    paths.root.mkdir(parents=True)
    foreign = RunPaths.of(tmp_path / "other", classifier.name, 1).last.read_bytes()
    paths.last.write_bytes(foreign)
    line = refused(tmp_path, "--data-dir", synthetic_data)
    assert "debug/fold1: cannot continue the run" in line and "its weights do not fit the model" in line
    assert len(line) < 700 and paths.last.read_bytes() == foreign
