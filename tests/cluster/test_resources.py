"""A sweep's resources: jobs on a CPU side by side share its cores out instead of each taking them all."""

from __future__ import annotations

import pytest

from common_blocks.cluster import resources
from common_blocks.cluster.resources import resolve_resources


@pytest.fixture
def cpu_only(monkeypatch):
    """A machine without GPUs and with 4 usable cores."""
    monkeypatch.setattr(resources, "visible_gpus", lambda: [])
    monkeypatch.setattr(resources, "usable_cores", lambda: 4)


@pytest.mark.parametrize(("parallelism", "threads"), [(None, None), (1, None), (2, 2), (3, 1), (8, 1)])
def test_local_cpu_jobs_share_the_cores_out(cpu_only, parallelism, threads):
    """One job at a time keeps torch's default (every core); K at a time get cores // K threads each,
    at least one."""
    res = resolve_resources("local", array_parallelism=parallelism)
    assert (res.gpus_per_job, res.array_parallelism or 1, res.cpu_threads) == (0, parallelism or 1, threads)


def test_gpu_and_slurm_jobs_keep_torchs_threads(monkeypatch):
    monkeypatch.setattr(resources, "visible_gpus", lambda: [0, 1])
    assert resolve_resources("local", array_parallelism=2).cpu_threads is None
    assert resolve_resources("slurm", array_parallelism=2).cpu_threads is None
