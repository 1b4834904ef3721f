"""Timing a training step, shared by ``bench_train`` (CPU) and ``bench_gpu``: the device a run
measures on, the model step alone on preloaded batches, and a Lightning callback timing
``Trainer.fit``. Both time the same step the training runs, so their ratio is the pipeline's cost."""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import torch

# isort: off
import common_blocks.training  # noqa: F401  (first: declares the torchvision ops lightning needs)
import lightning as L

# isort: on
from benchmarks.common import REAL_SAMPLE
from common_blocks.backend_names import no_cpu_bf16_reason
from common_blocks.inference.predictor import AUTOCAST_DTYPES
from common_blocks.training.config import TrainConfig, load_config
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule
from common_blocks.training.precision import resolve_precision

TIMED_PRECISIONS = ("fp32", "bf16", "fp16")  # training and prediction, in this order
MIB = 2**20


class Device:
    """The device of the run: moving batches, synchronising timings, peak memory."""

    def __init__(self, cpu: bool) -> None:
        self.torch = torch.device("cpu" if cpu else "cuda")
        self.cuda = self.torch.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest convolutions once

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        """``torch.cuda.max_memory_allocated`` since the last ``reset_peak``; None on the CPU."""
        return torch.cuda.max_memory_allocated() / MIB if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            key: value.to(self.torch, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()
        }

    def precisions(self) -> dict[str, str | None]:
        """Each precision of ``TIMED_PRECISIONS`` and why it is skipped here (None: it runs)."""
        if self.cuda:
            return dict.fromkeys(TIMED_PRECISIONS)
        return {"fp32": None, "bf16": no_cpu_bf16_reason(), "fp16": "fp16 is GPU-only"}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--data-dir`` (the real sample by default) and ``--set`` of the CPU training benchmarks."""
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=REAL_SAMPLE)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a config override"
    )


def cpu_config(args: argparse.Namespace, folder: Path, overrides: list[str]) -> TrainConfig:
    """``--config`` on ``--data-dir`` with a folds file written in ``folder``, ``overrides`` and then
    ``--set``'s, and ``trainer.precision: auto`` decided for this CPU as ``train_fold`` does."""
    data = [f"data.data_dir={args.data_dir}", f"data.folds_file={folder / 'folds.csv'}"]
    cfg = load_config(args.config, [*data, *overrides, *args.overrides])
    precision, _ = resolve_precision(cfg.trainer.precision, "cpu")
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"precision": precision})})


# A timed fit: no weights to fetch, no checkpoints, and no validation, so nothing for early stopping
# or a plateau schedule to watch.
TIMED_FIT_OVERRIDES = (
    "model.args.encoder_weights=null",
    "trainer.checkpoint_every_n_steps=null",
    "trainer.early_stopping_patience=null",
    "scheduler={type: none}",
)


def fold0_training_data(cfg: TrainConfig) -> SteelDataModule:
    """Fold 0's data module of ``cfg``, prepared and set up for fitting."""
    datamodule = SteelDataModule(cfg, 0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def step_alone(module: DefectModule, batches: list[dict], warmup: int, steps: int, device: Device) -> dict:
    """Forward, loss, backward and optimiser step on batches already on the device, as Lightning's
    precision plugin runs them: autocast to the precision's dtype around forward and loss, and for
    fp16 a gradient scaler. ``warmup`` untimed steps first."""
    precision = module.cfg.trainer.precision
    dtype = AUTOCAST_DTYPES[precision]
    module.to(device.torch).train()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    scaler = torch.amp.GradScaler(device.torch.type) if precision == "fp16" else None

    def step(batch: dict[str, Any]) -> torch.Tensor:
        with torch.autocast(device.torch.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = module.mask_loss(module.model_logits(batch["image"]), batch)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    device.reset_peak()
    for index in range(warmup):
        step(batches[index % len(batches)])
    device.synchronize()
    images, started = 0, time.perf_counter()
    for index in range(steps):
        batch = batches[index % len(batches)]
        loss = step(batch)
        images += batch["image"].shape[0]
    device.synchronize()
    seconds = time.perf_counter() - started
    return {"img_s": images / seconds, "peak_gpu_mib": device.peak_mib(), "last_loss": float(loss)}


def step_gflop_per_image(module: DefectModule, batch: dict[str, Any]) -> float:
    """GFLOP of one training step per image, counted as three forward passes (forward, and backward's
    two products per layer), the forward's convolutions and matrix products as
    ``torch.utils.flop_counter`` counts them; element-wise work and the optimiser are not counted.
    Not the counter's own backward figure: it counts EfficientNet's depthwise convolutions' backward as
    dense ones (22.9 GFLOP for a 2.4 GFLOP forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.model_logits(batch["image"])
    return 3 * counter.get_total_flops() / batch["image"].shape[0] / 1e9


def matmul_gflop_s(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The CPU's measured limit: GFLOP/s of a large square matrix product in ``dtype``, best of
    ``repeats``, on torch's threads (what the convolutions could reach at best)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


class BatchTimer(L.Callback):
    """Images/s of ``Trainer.fit`` between the end of the warm-up batches and the end of the last one,
    the device synchronised at both ends (and nowhere else, so the loop runs as it always does)."""

    def __init__(self, warmup: int, steps: int, device: Device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.started = self.finished = 0.0
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self.device.synchronize()
            self.started = time.perf_counter()
        elif batch_idx >= self.warmup:
            self.images += batch["image"].shape[0]
            if batch_idx == self.warmup + self.steps - 1:
                self.device.synchronize()
                self.finished = time.perf_counter()

    @property
    def rate(self) -> float:
        if not self.finished:
            raise RuntimeError(f"the fit ended before its {self.warmup + self.steps} batches")
        return self.images / (self.finished - self.started)
