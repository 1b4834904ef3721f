"""The local executor (``severstal sweep --executor local``): a two-fold debug ensemble trained and
tuned end to end, a failed run named, Ctrl-C as one line, a later stage started from its earlier one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml

from common_blocks.cluster.jobs import RunState, TrainJob, run_state
from common_blocks.cluster.local import run_local
from common_blocks.cluster.plan import PlannedRun, SweepPlan
from common_blocks.cluster.resources import Resources, usable_cores
from common_blocks.errors import PipelineError
from common_blocks.inference.ensemble_config import load_ensemble_config
from common_blocks.run_folder import RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.module import DefectModule
from tests.cli_contract import SEVERSTAL, as_in_a_terminal, run_in_process, snapshot
from tests.cluster.sweeps import (
    DEBUG,
    GATE,
    QUICK,
    ensemble_file,
    last_step,
    second_stage,
    sets,
)
from tests.repository import ROOT


@pytest.mark.slow
def test_local_sweep_trains_every_run_then_tunes_the_ensemble(tmp_path, synthetic_data):
    ensemble = ensemble_file(tmp_path, synthetic_data)
    args = ["sweep", "--config", ensemble, "--executor", "local", "--array-parallelism", "2", *sets(*QUICK)]
    outcome = run_in_process(*args)
    assert outcome.code == 0, outcome.stderr[-3000:] + outcome.stdout[-3000:]
    runs = tmp_path / "runs"
    for name in ("debug", "debug_classifier"):
        cfg = load_config(DEBUG if name == "debug" else GATE, [f"data.data_dir={synthetic_data}", *QUICK])
        for fold in (0, 1):
            paths = RunPaths.of(runs, name, fold)
            summary = json.loads(paths.summary.read_text())
            assert (summary["name"], summary["fold"], summary["config_digest"]) == (name, fold, cfg.digest())
            assert paths.best.is_file() and 0.0 <= summary["score"] <= 1.0
            assert f"{name}/fold{fold}: start: job " in outcome.stdout
    # Two jobs at a time on this CPU: each trained with half its cores (its log's first line says so).
    threads = max(1, usable_cores() // 2)
    assert f"2 at a time, {threads} torch thread(s) each" in outcome.stdout
    job_lines = [
        line for log in (runs / "sweep_logs").glob("*/*_log.out") for line in log.read_text().splitlines()
        if ": start (torch threads: " in line
    ]  # fmt: skip
    assert len(job_lines) == 4 and all(line.endswith(f"(torch threads: {threads})") for line in job_lines), (
        job_lines
    )
    thresholds = json.loads((runs / "ensemble" / "thresholds.json").read_text())
    assert thresholds and (runs / "ensemble" / "oof.npz").is_file()
    assert "local CV" in outcome.stdout and str(runs / "sweep_logs") in outcome.stdout
    # The same sweep again: every run is finished with this config, so no job starts.
    before = snapshot(runs / "debug", runs / "debug_classifier")
    again = run_in_process(*args, "--train-only")
    assert again.code == 0, again.stderr[-3000:]
    assert again.stdout.count("finished already, skipped") == 4 and "job " not in again.stdout
    assert snapshot(runs / "debug", runs / "debug_classifier") == before


@pytest.mark.slow
def test_a_failed_run_is_named_and_the_oof_search_is_not_run(tmp_path, synthetic_data):
    """A job that fails (here: its data folder is gone since the sweep was planned) ends the local
    sweep with one error naming the run; the line of its traceback that says why is printed."""
    ensemble = load_ensemble_config(ensemble_file(tmp_path, synthetic_data))
    cfg = load_config(DEBUG, [f"data.data_dir={tmp_path / 'gone'}", *QUICK])
    plan = SweepPlan(ensemble, [PlannedRun(TrainJob(cfg, 0, tmp_path / "runs", ROOT), RunState("start"))],
                     tmp_path / "runs", ROOT)  # fmt: skip
    lines: list[str] = []
    with pytest.raises(
        PipelineError, match=r"1 of 1 runs failed \(debug/fold0; see their logs\); the OOF search"
    ):
        run_local(plan, Resources(0, 10, 1), report=lines.append)
    failed = [line for line in lines if "debug/fold0: failed" in line]
    assert len(failed) == 1 and "DataError: " in failed[0] and "data directory not found" in failed[0], lines
    assert not any("OOF search:" in line for line in lines)


@pytest.mark.subprocess
@pytest.mark.slow
def test_ctrl_c_stops_a_local_sweep_with_one_line_and_keeps_last_ckpt(tmp_path, synthetic_data):
    """Ctrl-C (SIGINT to the terminal's process group: the sweep, submitit's controller and the job)
    mid-run: exit 130 with one ``interrupted:`` line naming the run, its last.ckpt kept, no summary."""
    ensemble = tmp_path / "one.yaml"
    ensemble.write_text(
        yaml.safe_dump({"data_dir": str(synthetic_data), "members": [{"config": str(DEBUG), "folds": [3]}]})
    )
    overrides = [
        "trainer.max_epochs=1",
        "trainer.checkpoint_every_n_steps=1",
        "data.samples_per_epoch=400",  # 100 steps: far longer than it takes to interrupt it
        "augment.crop_height=128",
        "augment.crop_width=256",
    ]
    args = [
        "sweep",
        "--config",
        ensemble,
        "--executor",
        "local",
        "--train-only",
        "--out-dir",
        tmp_path / "runs",
    ]
    process = subprocess.Popen(
        [SEVERSTAL, *map(str, args), *sets(*overrides)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_in_a_terminal,
    )
    paths = RunPaths.of(tmp_path / "runs", "debug", 3)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and last_step(paths.last) < 1:
        time.sleep(0.1)
    assert process.poll() is None, "the sweep ended before it could be interrupted"
    if last_step(paths.last) < 1:  # what is interrupted below would not be what this test is about
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the run wrote no checkpoint within 120 s (is the machine loaded?)")
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130 and len(lines) == 1, stderr
    assert lines[0].startswith(
        "interrupted: sweep one stopped (debug/fold3 was running; each keeps its last.ckpt)"
    )
    assert last_step(paths.last) >= 1 and not paths.summary.exists()


@pytest.mark.slow
def test_local_sweep_starts_a_stage_from_its_earlier_stage_of_the_same_fold(tmp_path, synthetic_data):
    stage = second_stage(tmp_path)
    ensemble = ensemble_file(tmp_path, synthetic_data, [{"config": str(stage), "folds": [0]}], folds=(0,))
    args = ["sweep", "--config", ensemble, "--executor", "local", "--array-parallelism", "2", "--train-only"]
    outcome = run_in_process(*args, *sets(*QUICK))
    assert outcome.code == 0, outcome.stderr[-3000:] + outcome.stdout[-3000:]
    runs = tmp_path / "runs"
    first, later = RunPaths.of(runs, "debug", 0), RunPaths.of(runs, "debug_full", 0)
    assert outcome.stdout.index("debug/fold0: done") < outcome.stdout.index("debug_full/fold0: start")
    assert load_config(later.config).init_from == str(DEBUG)
    # the later stage's first checkpoint moved on from the earlier stage's best weights, not from scratch
    start = torch.load(first.best, weights_only=True)["state_dict"]
    end = torch.load(later.best, weights_only=True)["state_dict"]
    assert start.keys() == end.keys()
    distance = sum((end[k].float() - start[k].float()).norm() for k in start if start[k].is_floating_point())
    fresh = DefectModule(load_config(later.config).model_dump(mode="json")).state_dict()
    from_scratch = sum(
        (end[k].float() - fresh[k].float()).norm() for k in start if start[k].is_floating_point()
    )
    assert distance < from_scratch


@pytest.mark.slow
def test_a_run_trained_with_precision_auto_is_seen_finished(tmp_path, synthetic_data):
    """``trainer.precision: auto`` trains in what the machine picks, which the run's config.yaml
    records; its summary names the config as asked for, so a sweep of that config skips the run
    instead of resuming a finished fit (which has nothing left to train)."""
    overrides = [f"data.data_dir={synthetic_data}", *QUICK, "trainer.precision=auto"]
    outcome = run_in_process(
        "train", "--config", DEBUG, "--fold", "0", "--out-dir", tmp_path / "runs", *sets(*overrides)
    )
    assert outcome.code == 0, outcome.stderr[-3000:]
    cfg = load_config(DEBUG, overrides)
    paths = RunPaths.of(tmp_path / "runs", "debug", 0)
    assert load_config(paths.config).trainer.precision in ("fp32", "bf16")  # the precision it trained in
    assert run_state(paths, cfg, 0).action == "finished"

    # A run of an older version of the pipeline: its summary holds the digest of that version's schema,
    # its config.yaml lacks the keys added since (read at their defaults) and names the data folder as
    # another path to the same place. It is still this config's finished run...
    saved = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
    del saved["data"]["weak"], saved["pseudo"]["images"]
    saved["data"]["data_dir"] = os.path.relpath(synthetic_data)
    paths.config.write_text(yaml.safe_dump(saved), encoding="utf-8")
    summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    paths.summary.write_text(json.dumps({**summary, "config_digest": "0123456789"}), encoding="utf-8")
    assert run_state(paths, cfg, 0).action == "finished"
    # ... and not once any setting differs, or for another precision than the one that was asked for.
    other_lr = load_config(DEBUG, [*overrides, "optimizer.encoder_lr=0.002"])
    assert run_state(paths, other_lr, 0).action != "finished"
    trained_in = load_config(paths.config).trainer.precision
    other_precision = load_config(
        DEBUG, [*overrides, f"trainer.precision={'bf16' if trained_in == 'fp32' else 'fp32'}"]
    )
    assert run_state(paths, other_precision, 0).action != "finished"
