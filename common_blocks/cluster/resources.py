"""The resources of a sweep's jobs: GPUs, nodes, time limits and how many jobs run at once, with the
defaults of each executor (``resolve_resources``), and the time limits' settings both executors share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from common_blocks.errors import ConfigError

MAX_TIMEOUTS = 20  # requeues after a time limit per job; preemptions do not count
SLURM_TIMEOUT_MIN = 240  # a job that hits it is requeued and continues from last.ckpt
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes
SLURM_SIGNAL_DELAY_S = 90  # USR2 this long before the time limit


@dataclass(frozen=True)
class Resources:
    """What each training job gets: GPUs (and as many processes: one DDP rank per GPU), nodes, a time
    limit, and how many jobs run at once."""

    gpus_per_job: int
    timeout_min: int
    array_parallelism: int | None  # None (Slurm): every run at once
    num_nodes: int = 1
    partition: str | None = None
    slurm_options: dict[str, str] = field(default_factory=dict)
    cpu_threads: int | None = None  # torch threads of each job; None: torch's default (every core)

    @property
    def devices(self) -> int:
        """Lightning's ``devices`` per node: the GPUs, or one CPU process without them."""
        return max(1, self.gpus_per_job)


def visible_gpus() -> list[int]:
    """This machine's GPUs as the indices CUDA_VISIBLE_DEVICES names (all of them when it is unset)."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None or not count:
        return list(range(count))
    entries = [entry.strip() for entry in listed.split(",") if entry.strip()]
    if not all(entry.isdigit() for entry in entries):
        raise ConfigError(
            f"CUDA_VISIBLE_DEVICES={listed}: the local executor gives each job its own GPUs by index; "
            "list the GPUs as indices (0,1,...)"
        )
    return [int(entry) for entry in entries[:count]]


def resolve_resources(
    executor: str,
    gpus_per_job: int | None = None,
    timeout_min: int | None = None,
    array_parallelism: int | None = None,
    num_nodes: int = 1,
    partition: str | None = None,
    slurm_options: dict[str, str] | None = None,
) -> Resources:
    """The resources of a sweep, defaults filled in. Slurm: 1 GPU per job, every run at once, 4 hours
    a job (then requeued). Local: the visible GPUs shared out, one per job (one job at a time without
    a GPU, and then several at once share the cores out), no time limit."""
    if executor == "slurm":
        return Resources(
            1 if gpus_per_job is None else gpus_per_job,
            SLURM_TIMEOUT_MIN if timeout_min is None else timeout_min,
            array_parallelism,
            num_nodes,
            partition,
            dict(slurm_options or {}),
        )
    gpus = visible_gpus()
    if gpus_per_job is None:
        gpus_per_job = 1 if gpus else 0
    if gpus_per_job > len(gpus):
        raise ConfigError(f"--gpus-per-job {gpus_per_job}: this machine has {len(gpus)} visible GPU(s)")
    slots = len(gpus) // gpus_per_job if gpus_per_job else 1
    if array_parallelism is None:
        array_parallelism = slots
    elif gpus_per_job and array_parallelism > slots:
        raise ConfigError(
            f"--array-parallelism {array_parallelism} x --gpus-per-job {gpus_per_job} needs "
            f"{array_parallelism * gpus_per_job} GPUs; this machine has {len(gpus)} visible"
        )
    # Jobs on the CPU side by side share its cores out: each with every core would oversubscribe them.
    cpu_threads = (
        None if gpus_per_job or array_parallelism == 1 else max(1, usable_cores() // array_parallelism)
    )
    return Resources(
        gpus_per_job,
        LOCAL_TIMEOUT_MIN if timeout_min is None else timeout_min,
        array_parallelism,
        cpu_threads=cpu_threads,
    )


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container or ``taskset`` narrows)."""
    return len(os.sched_getaffinity(0))
