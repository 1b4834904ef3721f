"""Training throughput: the full pipeline (loader + Lightning step) against the model step alone.

    python -m benchmarks.bench_train --config configs/cpu_small.yaml [--steps 20] [--set trainer.precision=bf16]
    python -m benchmarks.bench_train --config configs/fpn_se_resnext50.yaml --steps 4 --batch-size 4

Both run in one process on the same model and batch size, on the real sample's fold-0 training
images: first the model step alone on batches preloaded into memory, then ``Trainer.fit`` with the
real loader and sampler. The ratio says how much the data pipeline and the loop cost on top of the
model; the target is >= 0.85. Pretrained weights are not needed for timing (encoder_weights: null).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

# isort: off
import common_blocks.training  # noqa: F401  (first: declares the torchvision ops lightning needs)

# isort: on
from benchmarks.common import doc_parser, peak_rss_mib, require_real_sample
from benchmarks.train_timing import (
    TIMED_FIT_OVERRIDES,
    BatchTimer,
    Device,
    add_run_arguments,
    cpu_config,
    fold0_training_data,
    matmul_gflop_s,
    step_alone,
    step_gflop_per_image,
)
from common_blocks.backend_names import cpu_has_bf16
from common_blocks.run_folder import RunPaths
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule
from common_blocks.training.runner import build_trainer


def full_pipeline(cfg, datamodule: SteelDataModule, steps: int) -> float:
    """Images/s of Trainer.fit over the real loader, timed from the first to the last batch."""
    module = DefectModule(cfg.model_dump(mode="json"), 0)
    timer = BatchTimer(1, steps, Device(cpu=True))
    with tempfile.TemporaryDirectory() as folder:
        trainer, _ = build_trainer(cfg, RunPaths(Path(folder)), "cpu", 1, [timer])
        trainer.limit_train_batches = steps + 1
        trainer.limit_val_batches = 0
        trainer.fit_loop.max_epochs = 1
        trainer.fit(module, datamodule=datamodule)
    return timer.rate


def main() -> None:
    parser = doc_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, help="overrides data.batch_size")
    parser.add_argument("--workers", type=int, help="overrides data.num_workers")
    args = parser.parse_args()
    require_real_sample(args.data_dir)
    with tempfile.TemporaryDirectory() as folds_dir:
        overrides = list(TIMED_FIT_OVERRIDES)
        if args.batch_size:
            overrides.append(f"data.batch_size={args.batch_size}")
        if args.workers is not None:
            overrides.append(f"data.num_workers={args.workers}")
        cfg = cpu_config(args, Path(folds_dir), overrides)
        datamodule = fold0_training_data(cfg)
        loader = datamodule.train_dataloader()
        batches = [batch for batch, _ in zip(loader, range(min(args.steps, 8)))]
        module = DefectModule(cfg.model_dump(mode="json"), 0)
        gflop = step_gflop_per_image(module, batches[0])
        alone = step_alone(module, batches, 1, args.steps, Device(cpu=True))["img_s"]
        del batches, loader
        pipeline = full_pipeline(cfg, datamodule, args.steps)
    print(
        f"{cfg.name}: batch {cfg.data.batch_size}, workers {cfg.data.num_workers}, threads {torch.get_num_threads()}, "
        f"precision {cfg.trainer.precision}"
    )
    limits = {"fp32": matmul_gflop_s(torch.float32)}
    if cpu_has_bf16():
        limits["bf16"] = matmul_gflop_s(torch.bfloat16)
    limit_text = ", ".join(f"{name} {value:.0f}" for name, value in limits.items())
    print(f"model step alone  {alone:8.2f} img/s  {alone * gflop:6.1f} GFLOP/s ({gflop:.2f} GFLOP per image)")
    print(f"full pipeline     {pipeline:8.2f} img/s  {pipeline * gflop:6.1f} GFLOP/s")
    print(f"ratio             {pipeline / alone:8.2f} (target >= 0.85)")
    print(
        f"machine limit     matrix product {limit_text} GFLOP/s (2048 x 2048, {torch.get_num_threads()} threads)"
    )
    print(f"peak RSS          {peak_rss_mib():8.0f} MiB")


if __name__ == "__main__":
    main()
