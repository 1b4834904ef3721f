"""Several folds on one CPU: K training processes side by side with cores // K torch threads each (what
``severstal sweep --executor local --array-parallelism K`` runs without a GPU), against one process
with every core. Each process runs ``Trainer.fit`` over the real loader on fold 0 of the real sample,
as ``bench_train``'s full pipeline does; the processes start their timed steps together (a barrier),
and their images/s are added up.

    python -m benchmarks.bench_train_parallel --config configs/cpu_small.yaml [--jobs 2] [--steps 30] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import doc_parser, require_real_sample
from benchmarks.train_timing import add_run_arguments

BARRIER_TIMEOUT_S = 600


def measure(args: argparse.Namespace) -> dict:
    """One process: set up, wait at the barrier for its siblings, then time the pipeline's steps."""
    import torch

    torch.set_num_threads(args.threads)
    # isort: off
    import common_blocks.training  # noqa: F401  (first: declares the torchvision ops lightning needs)

    # isort: on
    from benchmarks.bench_train import full_pipeline
    from benchmarks.train_timing import TIMED_FIT_OVERRIDES, cpu_config, fold0_training_data

    with tempfile.TemporaryDirectory() as folds_dir:
        cfg = cpu_config(args, Path(folds_dir), list(TIMED_FIT_OVERRIDES))
        datamodule = fold0_training_data(cfg)
        barrier = Path(args.barrier)
        (barrier / f"ready{args.index}").touch()
        deadline = time.time() + BARRIER_TIMEOUT_S
        while len(list(barrier.glob("ready*"))) < args.jobs:
            if time.time() > deadline:
                raise SystemExit("error: the other processes never got ready")
            time.sleep(0.05)
        img_s = full_pipeline(cfg, datamodule, args.steps)
    return {"img_s": img_s, "threads": torch.get_num_threads(), "batch_size": cfg.data.batch_size}


def side_by_side(jobs: int, threads: int) -> list[dict]:
    """``jobs`` child processes of ``threads`` threads each, timed together; their results."""
    with tempfile.TemporaryDirectory() as barrier:
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_train_parallel",
                    *sys.argv[1:],
                    "--child",
                    "--index",
                    str(index),
                    "--threads",
                    str(threads),
                    "--barrier",
                    barrier,
                    "--jobs",
                    str(jobs),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for index in range(jobs)
        ]
        outputs = [child.communicate()[0] for child in children]
    failed = [child.returncode for child in children if child.returncode != 0]
    if failed:
        raise SystemExit(f"error: {len(failed)} measuring process(es) failed (exit {failed[0]})")
    return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def main() -> None:
    parser = doc_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--jobs", type=int, default=2, help="processes side by side (default 2)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps of each process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_real_sample(args.data_dir)
    if args.child:
        print(json.dumps(measure(args)))
        return
    cores = len(os.sched_getaffinity(0))
    alone = side_by_side(1, cores)[0]["img_s"]
    together = side_by_side(args.jobs, max(1, cores // args.jobs))
    total = sum(result["img_s"] for result in together)
    each = ", ".join(f"{result['img_s']:.2f}" for result in together)
    print(f"{args.config.stem}: {cores} cores, {args.steps} timed steps per process")
    print(f"1 process, {cores} threads          {alone:8.2f} img/s")
    print(f"{args.jobs} processes, {together[0]['threads']} thread(s) each  {total:8.2f} img/s ({each})")
    print(f"ratio                          {total / alone:8.2f}")


if __name__ == "__main__":
    main()
