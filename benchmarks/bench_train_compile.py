"""``trainer.compile`` for training, and whether Inductor's on-disk cache makes it pay across the folds
of a sweep. The model step of ``--config`` (fold 0 of the real sample, as ``bench_train`` runs it) in
three processes, one after the other: eager; compiled with an empty cache (a sweep's first fold);
compiled again with the cache the second one left (every later fold of the same network). Each
reports its first training step and its first validation batch (where the compiling happens) and
its steps' images/s; then what a fold of the config would save against what it would spend.

    python -m benchmarks.bench_train_compile --config configs/cpu_small.yaml [--steps 20] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import doc_parser, require_real_sample
from benchmarks.train_timing import add_run_arguments

MODES = {"eager": "eager", "cold": "compiled, empty cache", "warm": "compiled, the cache of the run before"}


def measure(args: argparse.Namespace) -> dict:
    """One mode in this process: the first training step, the first validation batch, the steps' rate."""
    import torch

    # isort: off
    import common_blocks.training  # noqa: F401  (first: declares the torchvision ops lightning needs)

    # isort: on
    from benchmarks.train_timing import Device, cpu_config, fold0_training_data, step_alone
    from common_blocks.training.module import DefectModule

    with tempfile.TemporaryDirectory() as folds_dir:
        overrides = [
            "model.args.encoder_weights=null",
            f"trainer.compile={str(args.child != 'eager').lower()}",
        ]
        cfg = cpu_config(args, Path(folds_dir), overrides)
        datamodule = fold0_training_data(cfg)
        loader = datamodule.train_dataloader()
        batches = [batch for batch, _ in zip(loader, range(min(args.steps, 8)))]
        fold_steps = len(loader) * cfg.trainer.max_epochs
    module = DefectModule(cfg.model_dump(mode="json"), 0)
    module.configure_model()  # what Lightning calls before fitting: compiles in place when asked
    started = time.perf_counter()
    result = step_alone(module, batches, 1, args.steps, Device(cpu=True))
    timed = args.steps * cfg.data.batch_size / result["img_s"]
    first_step = time.perf_counter() - started - timed
    module.eval()
    started = time.perf_counter()
    with torch.no_grad():
        module.model_logits(batches[0]["image"])
    return {
        "first_step_s": first_step,
        "first_validation_s": time.perf_counter() - started,
        "img_s": result["img_s"],
        "fold_steps": fold_steps,
        "batch_size": cfg.data.batch_size,
        "precision": cfg.trainer.precision,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = doc_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps after the first")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_real_sample(args.data_dir)
    if args.child:
        print(json.dumps(measure(args)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for mode in MODES:
            command = [sys.executable, "-m", "benchmarks.bench_train_compile", "--child", mode, *sys.argv[1:]]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(
                    f"error: the {MODES[mode]} run failed: {done.stderr.strip().splitlines()[-1:]}"
                )
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    first = results["eager"]
    print(
        f"{args.config.stem}: batch {first['batch_size']}, precision {first['precision']}, {first['threads']} "
        f"threads, {args.steps} timed steps"
    )
    print(f"{'':40} {'first step':>11} {'first validation':>17} {'steps':>11}")
    for mode, label in MODES.items():
        r = results[mode]
        print(
            f"{label:40} {r['first_step_s']:10.1f}s {r['first_validation_s']:16.1f}s {r['img_s']:6.2f} img/s"
        )
    per_step = {mode: first["batch_size"] / results[mode]["img_s"] for mode in MODES}
    for mode in ("cold", "warm"):
        saved = (per_step["eager"] - per_step[mode]) * first["fold_steps"]
        spent = sum(results[mode][key] - first[key] for key in ("first_step_s", "first_validation_s"))
        steps = (
            spent / (per_step["eager"] - per_step[mode]) if per_step[mode] < per_step["eager"] else math.inf
        )
        print(
            f"a fold ({first['fold_steps']} steps) saves {saved:.0f} s of steps; compiling, {MODES[mode]}, costs "
            f"{spent:.0f} s: pays after {steps:.0f} steps"
        )


if __name__ == "__main__":
    main()
