"""The sweep's jobs: a training job preempted by Slurm's signal is requeued by submitit and resumes
from last.ckpt; the OOF job predicts as the sweep's options say."""

from __future__ import annotations

import csv
import os
import re
import signal
import time

import pytest
import submitit
import torch

from common_blocks.cluster.jobs import TrainJob
from common_blocks.cluster.plan import plan_sweep
from common_blocks.errors import ConfigError
from common_blocks.inference.options import PredictOptions
from common_blocks.run_folder import TRAIN_LOSS, RunPaths
from common_blocks.training.config import load_config
from tests.cluster.sweeps import (
    DEBUG,
    children,
    ensemble_file,
    last_step,
)
from tests.repository import ROOT


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_from_last_ckpt(tmp_path, synthetic_data):
    """The real submitit machinery: SIGUSR2 (what Slurm sends before a time limit or a preemption)
    mid-epoch; submitit calls TrainJob.checkpoint, requeues, and the new attempt continues from
    last.ckpt: one history in metrics.csv, each step once, and the final step count of one run."""
    steps = 10  # data.samples_per_epoch=40 at batch size 4
    cfg = load_config(
        DEBUG,
        [
            f"data.data_dir={synthetic_data}",
            "trainer.max_epochs=1",
            "trainer.checkpoint_every_n_steps=1",
            "data.samples_per_epoch=40",
            "augment.crop_height=128",
            "augment.crop_width=256",
        ],
    )
    paths = RunPaths.of(tmp_path / "runs", cfg.name, 0)
    executor = submitit.LocalExecutor(folder=tmp_path / "logs" / "%j", max_num_timeout=3)
    executor.update_parameters(timeout_min=10, tasks_per_node=1, gpus_per_node=0)
    job = executor.submit(TrainJob(cfg, 0, tmp_path / "runs", ROOT))
    deadline, step = time.time() + 120, -1
    while time.time() < deadline and not job.done():
        step = last_step(paths.last)
        if 1 <= step <= steps - 4:  # mid-epoch, well before the end
            break
        time.sleep(0.1)
    tasks = children(int(job.job_id))
    assert 1 <= step <= steps - 4 and len(tasks) == 1, f"no mid-epoch checkpoint in time (step {step})"
    os.kill(tasks[0], signal.SIGUSR2)
    summary = job.result()
    log = job.stdout()
    assert summary["skipped"] is False and paths.summary.is_file(), log
    assert "preempted or timed out; requeued" in log and "Requeued job" in log, log
    resumed = [line for line in log.splitlines() if "debug/fold0: resume from last.ckpt" in line]
    assert len(resumed) == 1 and log.count("debug/fold0: start") == 1, log
    resumed_at = int(re.search(r"\(epoch \d+, step (\d+)\)", resumed[0]).group(1))
    assert step <= resumed_at < steps
    final = torch.load(paths.last, weights_only=False, map_location="cpu")
    assert final["global_step"] == steps and final["epoch"] >= 0
    with open(paths.metrics, newline="") as file:
        trained = [int(row["step"]) for row in csv.DictReader(file) if row.get(TRAIN_LOSS)]
    assert trained == list(range(steps)), trained  # a restart would log from step 0 again


def test_the_oof_job_predicts_as_the_sweeps_options_say(tmp_path, synthetic_data, monkeypatch):
    """``--backend`` and ``--precision`` reach the OOF job: a precision this CPU cannot run is refused
    when the job starts, before any checkpoint is looked for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = plan_sweep(ensemble_file(tmp_path, synthetic_data), train_only=True)
    job = plan.oof_job(PredictOptions(batch_size=2, workers=0, precision="fp16"))
    assert job.options.batch_size == 2
    with pytest.raises(ConfigError, match="fp16"):
        job()
