"""GPU self-check: training throughput and memory per precision, and the ensemble predictor per precision.

    python -m benchmarks.bench_gpu [--out bench_gpu.json] [--steps 120] [--warmup 15] [--batch-size B]
        [--workers W] [--n-train 480] [--n-test 48] [--work-dir DIR]
    python -m benchmarks.bench_gpu --smoke [--out F]   # the same stages on the CPU, tiny, in seconds

On one CUDA device (sized for a few minutes, under 6, on one recent GPU such as an H200; the
figures are in the JSON and in one line per stage on stdout):

1. ``data``: a synthetic full-size (256x1600) data set in the Kaggle layout (``synthetic.generate``).
2. ``loader``: the training DataLoader alone (workers, pinned memory, persistent workers), images/s, so
   that the pipeline's figure can be told apart from the loader's.
3. ``train_fp32``, ``train_bf16``, ``train_fp16``: FPN + se_resnext50_32x4d
   (``configs/fpn_se_resnext50.yaml``, random init: ``encoder_weights: null``, nothing downloads) with
   channels-last, each precision twice: the model step alone (forward, loss, backward, optimiser step
   under the precision's autocast and, for fp16, gradient scaling, on batches preloaded onto the
   device) and the whole pipeline (``runner.build_trainer`` + ``Trainer.fit`` over ``SteelDataModule``'s
   loader), in images/s after ``--warmup`` steps that are not timed, with ``torch.cuda.synchronize()``
   at both ends of the timed steps; peak GPU memory of each (``torch.cuda.max_memory_allocated``).
4. ``predict_fp32``, ``predict_bf16``, ``predict_fp16``: ``build_predictor`` on a checkpoint of the same
   network (random init, batch-norm statistics of the synthetic images), TTA none+hflip as in
   ``configs/ensemble.yaml``: ``EnsemblePredictor.probabilities`` images/s on preloaded full-size test
   batches (host to device, the networks, flips, resize, back to the host), the largest and mean
   absolute probability difference against fp32 and the share of pixels whose 0.5 decision differs.

``--smoke`` runs the same stages on the CPU with ``configs/debug.yaml``, a few images and steps:
precisions fp32 and bf16 (bf16 only where the CPU has bf16 instructions; fp16 is GPU-only, so
recorded as skipped), the predictor in fp32 and bf16. Its figures check the script, not a machine.

Writes one JSON (``--out``): ``environment``, ``settings``, ``stages`` (each with ``status``: ``ok``
and its figures, ``failed`` and the one-line ``error``, ``skipped`` where the device cannot run it,
``not_run`` after a stage it needs failed), ``failed_stages``. A stage that fails is recorded and the
others still run; the exit status is then 1. Bad arguments are one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# isort: off
import common_blocks.training  # noqa: F401  (first: declares the torchvision ops lightning needs)
import lightning as L

# isort: on
import pandas as pd

from benchmarks.common import peak_rss_mib
from benchmarks.train_timing import MIB, TIMED_PRECISIONS, BatchTimer, Device, step_alone
from common_blocks.arguments import NON_NEGATIVE, POSITIVE, integer_at_least
from common_blocks.backend_names import cpu_has_bf16
from common_blocks.data.datasets import SegmentationDataset
from common_blocks.data.formats import list_images
from common_blocks.data.synthetic import generate
from common_blocks.errors import cli_entry
from common_blocks.files import atomic_output, check_output_dir, check_output_file
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.predictor import build_predictor
from common_blocks.run_folder import RunPaths
from common_blocks.strict_json import strict_json
from common_blocks.training.config import TrainConfig, load_config
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule
from common_blocks.training.runner import build_trainer, lightning_warnings_that_do_not_apply, resolve_devices

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = ROOT / "configs" / "fpn_se_resnext50.yaml"
SMOKE_CONFIG = ROOT / "configs" / "debug.yaml"
TTA = ("none", "hflip")  # configs/ensemble.yaml's
FOLD = 0

# Sizes: (GPU run, --smoke). The GPU figures are meant to be steady (about 1,000 timed images per
# precision at batch 8); the smoke ones only to run every line of the script quickly.
DEFAULTS = {
    "steps": (120, 3),
    "warmup": (15, 1),
    "n_train": (480, 16),
    "n_test": (48, 4),
    "predict_repeats": (3, 1),
}


class _Parser(argparse.ArgumentParser):
    """The pipeline's contract: a usage mistake is one ``error: ...`` line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: bench_gpu: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m benchmarks.bench_gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=_path, default=Path("bench_gpu.json"), help="the JSON (bench_gpu.json)")
    parser.add_argument("--smoke", action="store_true", help="the same stages on the CPU, tiny, in seconds")
    parser.add_argument("--steps", type=POSITIVE, help="timed training steps per measure (120; smoke 3)")
    parser.add_argument("--warmup", type=POSITIVE, help="untimed steps before them (15; smoke 1)")
    parser.add_argument("--batch-size", type=POSITIVE, help="training batch (default: the config's)")
    parser.add_argument(
        "--workers",
        type=NON_NEGATIVE,
        help="training loader workers (default: min(12, CPUs - 2) on the GPU, 1 with --smoke)",
    )
    parser.add_argument(
        "--n-train", type=integer_at_least(8), help="synthetic training images (480; smoke 16)"
    )
    parser.add_argument(
        "--n-test", type=POSITIVE, help="synthetic test images for the predictor (48; smoke 4)"
    )
    parser.add_argument("--predict-batch-size", type=POSITIVE, default=8, help="predictor batch (8)")
    parser.add_argument(
        "--threads",
        type=POSITIVE,
        help="torch threads (default: torch's own; 1 with --smoke, steady on a shared machine)",
    )
    parser.add_argument(
        "--work-dir",
        type=_path,
        help="data and checkpoints (default: a temporary folder, removed at the end)",
    )
    args = parser.parse_args(argv)
    for key, (gpu, smoke) in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, smoke if args.smoke else gpu)
    if args.threads is None and args.smoke:
        args.threads = 1
    if args.workers is None:
        args.workers = 1 if args.smoke else min(12, max(1, (os.cpu_count() or 2) - 2))
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; this check needs one GPU (--smoke runs it on the CPU)")
    return args


def _path(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


# --- devices and timing ------------------------------------------------------------------------------


def environment(device: Device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "device": device.torch.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.cuda:
        properties = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": properties.name,
            "gpu_memory_mib": properties.total_memory / MIB,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,  # "32" convolutions use TF32 when true
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    return info


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class Stages:
    """Runs each stage, records its figures or its one-line error, and goes on with the others."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.results: dict[str, dict[str, Any]] = {}

    def skip(self, name: str, reason: str) -> None:
        """A stage this device cannot run (fp16 on a CPU, say)."""
        self.results[name] = {"status": "skipped", "reason": reason}
        print(f"{name}: skipped ({reason})", flush=True)

    def not_run(self, name: str, reason: str) -> None:
        """A stage left out because one it needs failed."""
        self.results[name] = {"status": "not_run", "reason": reason}
        print(f"{name}: not run ({reason})", flush=True)

    def run(self, name: str, stage: Callable[[], dict[str, Any]]) -> bool:
        started = time.perf_counter()
        try:
            figures = stage()
        except Exception as error:  # noqa: BLE001 - a failed stage is recorded; the others still run
            seconds = time.perf_counter() - started
            self.results[name] = {"status": "failed", "error": one_line(error), "seconds": seconds}
            print(f"{name}: FAILED: {one_line(error)}", file=sys.stderr, flush=True)
            if os.environ.get("BENCH_GPU_TRACEBACK"):
                traceback.print_exc()
            return False
        finally:
            self.device.free()
        self.results[name] = {"status": "ok", **figures, "seconds": time.perf_counter() - started}
        shown = ", ".join(f"{key} {_shown(value)}" for key, value in figures.items())
        print(f"{name}: {shown}", flush=True)
        return True

    @property
    def failed(self) -> list[str]:
        return [name for name, result in self.results.items() if result["status"] == "failed"]


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- training ----------------------------------------------------------------------------------------


def train_config(args: argparse.Namespace, data_dir: Path, precision: str) -> TrainConfig:
    """The config under test, as ``--set`` overrides of the shipped YAML: random init, channels-last,
    one epoch of ``warmup + steps`` batches, no checkpoints mid-epoch, nothing that watches validation."""
    steps = args.warmup + args.steps
    base = load_config(args.config, [f"data.data_dir={data_dir}"])
    batch = args.batch_size or base.data.batch_size
    overrides = [
        f"data.data_dir={data_dir}",
        f"data.batch_size={batch}",
        f"data.num_workers={args.workers}",
        f"data.samples_per_epoch={steps * batch}",
        "model.args.encoder_weights=null",
        "trainer.channels_last=true",
        f"trainer.precision='{precision}'",
        f"trainer.accelerator={'cpu' if args.smoke else 'gpu'}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.checkpoint_every_n_steps=null",
        "trainer.early_stopping_patience=null",
        "scheduler={type: none}",
    ]
    return load_config(args.config, overrides)


def data_module(cfg: TrainConfig) -> SteelDataModule:
    datamodule = SteelDataModule(cfg, FOLD)
    datamodule.prepare_data()  # the folds file
    datamodule.setup("fit")
    return datamodule


def loader_alone(args: argparse.Namespace, data_dir: Path, device: Device) -> dict[str, Any]:
    """Images/s of the training loader by itself (each batch copied to the device, as Lightning does)."""
    cfg = train_config(args, data_dir, "fp32")
    loader = data_module(cfg).train_dataloader()
    images, started = 0, 0.0
    for index, batch in enumerate(loader):
        device.batch(batch)
        if index == args.warmup - 1:
            device.synchronize()
            started = time.perf_counter()
        elif index >= args.warmup:
            images += batch["image"].shape[0]
        if index == args.warmup + args.steps - 1:
            break
    device.synchronize()
    seconds = time.perf_counter() - started
    return {
        "img_s": images / seconds,
        "images": images,
        "batch_size": cfg.data.batch_size,
        "workers": cfg.data.num_workers,
        "pin_memory": loader.pin_memory,
        "persistent_workers": loader.persistent_workers,
    }


def whole_pipeline(cfg: TrainConfig, args: argparse.Namespace, work: Path, device: Device) -> dict:
    """``Trainer.fit`` as ``train_fold`` builds it (``build_trainer``, ``SteelDataModule``), without
    the validation pass."""
    accelerator, devices = resolve_devices(cfg, 1)
    module = DefectModule(cfg.model_dump(mode="json"), FOLD)
    timer = BatchTimer(args.warmup, args.steps, device)
    folder = Path(tempfile.mkdtemp(prefix="fit_", dir=work))
    try:
        trainer, _ = build_trainer(cfg, RunPaths(folder), accelerator, devices, [timer])
        trainer.limit_val_batches = 0
        device.reset_peak()
        with lightning_warnings_that_do_not_apply(), warnings.catch_warnings():
            # No validation runs in the timed fit, so the best-checkpoint callback finds no score.
            warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
            trainer.fit(module, datamodule=SteelDataModule(cfg, FOLD))
        peak = device.peak_mib()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"img_s": timer.rate, "peak_gpu_mib": peak, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def train_stage(args: argparse.Namespace, data_dir: Path, work: Path, device: Device, precision: str) -> dict:
    cfg = train_config(args, data_dir, precision)
    loader = data_module(cfg).train_dataloader()
    # A few distinct batches of the real loader (the same crops and masks), preloaded onto the device.
    batches = [device.batch(batch) for _, batch in zip(range(min(args.steps, 8)), loader, strict=False)]
    del loader
    torch.manual_seed(cfg.trainer.seed)
    module = DefectModule(cfg.model_dump(mode="json"), FOLD)
    alone = step_alone(module, batches, args.warmup, args.steps, device)
    del module, batches
    device.free()
    torch.manual_seed(cfg.trainer.seed)
    pipeline = whole_pipeline(cfg, args, work, device)
    return {
        "model": f"{cfg.model.type} {cfg.model.args.get('encoder_name')}",
        "batch_size": cfg.data.batch_size,
        "crop": [cfg.augment.crop_height, cfg.augment.crop_width],
        "workers": cfg.data.num_workers,
        "channels_last": cfg.trainer.channels_last,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_alone_img_s": alone["img_s"],
        "pipeline_img_s": pipeline["img_s"],
        "pipeline_over_step": pipeline["img_s"] / alone["img_s"],
        "step_alone_peak_gpu_mib": alone["peak_gpu_mib"],
        "pipeline_peak_gpu_mib": pipeline["peak_gpu_mib"],
        "step_alone_last_loss": alone["last_loss"],
        "cudnn_benchmark": pipeline["cudnn_benchmark"],
    }


# --- the ensemble predictor --------------------------------------------------------------------------


class PredictorBench:
    """One checkpoint of the network under test, preloaded test batches and the fp32 reference."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, work: Path, device: Device) -> None:
        self.args, self.device = args, device
        cfg = train_config(args, data_dir, "fp32")
        self.runs = work / "runs"
        ids = list_images(data_dir / "test_images")
        dataset = SegmentationDataset(
            pd.DataFrame({"ImageId": ids}),
            data_dir / "test_images",
            with_masks=False,
            grayscale=cfg.data.grayscale,
        )
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        size = args.predict_batch_size
        self.batches = [images[i : i + size] for i in range(0, len(images), size)]
        if device.cuda:  # as the submission loader gives them (pin_memory on CUDA)
            self.batches = [batch.pin_memory() for batch in self.batches]
        self.n_images = len(images)
        self.save_checkpoint(cfg)
        self.ensemble = EnsembleConfig.model_validate(
            {
                "name": "bench_gpu",
                "runs_dir": self.runs,
                "data_dir": data_dir,
                "members": [{"config": cfg.name, "folds": [FOLD]}],
                "tta": list(TTA),
            }
        )
        self.reference: list[torch.Tensor] | None = None

    def save_checkpoint(self, cfg: TrainConfig) -> None:
        """A random-init network whose batch-norm statistics are those of the test images (an untrained
        network's unit statistics let activations grow through 50 layers, unlike a trained one's), written
        as training writes a checkpoint."""
        torch.manual_seed(0)
        module = DefectModule(cfg.model_dump(mode="json"), FOLD, pretrained=False).to(self.device.torch)
        norms = [
            layer for layer in module.modules() if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
        ]
        momenta = [layer.momentum for layer in norms]
        for layer in norms:
            layer.reset_running_stats()
            layer.momentum = None  # a plain average over the batches below
        module.train()
        with torch.no_grad():
            for batch in self.batches[:2]:
                module.model_logits(batch.to(self.device.torch))
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
        module.eval().cpu()
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
        )
        trainer.strategy.connect(module)
        path = RunPaths.of(self.runs, cfg.name, FOLD).best
        trainer.save_checkpoint(path, weights_only=False)  # as training writes them
        self.checkpoint_mib = path.stat().st_size / MIB

    def run(self, precision: str) -> dict[str, Any]:
        predictor = build_predictor(self.ensemble, device=self.device.torch, precision=precision)
        self.device.reset_peak()
        predictor.probabilities(self.batches[0])  # warm-up: cuDNN's choice of kernels, first allocations
        outputs: list[torch.Tensor] = []
        best = float("inf")
        for _ in range(self.args.predict_repeats):
            outputs = []
            self.device.synchronize()
            started = time.perf_counter()
            for batch in self.batches:
                outputs.append(predictor.probabilities(batch))  # ends on the host: synchronised
            best = min(best, time.perf_counter() - started)
        figures: dict[str, Any] = {
            "img_s": self.n_images / best,
            "images": self.n_images,
            "batch_size": self.args.predict_batch_size,
            "tta": "+".join(TTA),
            "peak_gpu_mib": self.device.peak_mib(),
        }
        if precision == "fp32":
            self.reference = outputs
            return figures | {
                "max_abs_diff_vs_fp32": 0.0,
                "mean_abs_diff_vs_fp32": 0.0,
                "decisions_changed": 0.0,
            }
        if self.reference is None:
            raise RuntimeError("no fp32 reference to compare with (predict_fp32 failed)")
        largest = total = changed = pixels = 0.0
        finite = True
        for out, ref in zip(outputs, self.reference, strict=True):
            finite = finite and bool(torch.isfinite(out).all())
            diff = (out - ref).abs_()
            largest = max(largest, diff.max().item())
            total += diff.sum(dtype=torch.float64).item()
            changed += ((out > 0.5) != (ref > 0.5)).sum().item()
            pixels += ref.numel()
        return figures | {
            "max_abs_diff_vs_fp32": largest,
            "mean_abs_diff_vs_fp32": total / pixels,
            "decisions_changed": changed / pixels,  # share of pixels on the other side of 0.5
            "finite": finite,
        }


# --- main --------------------------------------------------------------------------------------------


@contextmanager
def work_folder(args: argparse.Namespace) -> Iterator[Path]:
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        yield args.work_dir
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = Device(args.smoke)
    stages = Stages(device)
    report: dict[str, Any] = {
        "smoke": args.smoke,
        "environment": environment(device),
        "settings": {
            "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_size": args.batch_size or load_config(args.config).data.batch_size,
            "workers": args.workers,
            "n_train": args.n_train,
            "n_test": args.n_test,
            "predict_batch_size": args.predict_batch_size,
        },
        "stages": stages.results,
    }
    started = time.perf_counter()
    with work_folder(args) as work:
        data_dir = work / "data"

        def make_data() -> dict[str, Any]:
            begun = time.perf_counter()
            (data_dir / "folds.csv").unlink(missing_ok=True)  # a reused --work-dir: split the new images
            generate(
                data_dir,
                args.n_train,
                args.n_test,
                seed=0,
                workers=min(8, os.cpu_count() or 1),
                overwrite=True,
            )
            seconds = time.perf_counter() - begun
            return {
                "n_train": args.n_train,
                "n_test": args.n_test,
                "img_s": (args.n_train + args.n_test) / seconds,
            }

        have_data = stages.run("data", make_data)
        if not have_data:
            later = ["loader", *(f"train_{p}" for p in TIMED_PRECISIONS), "predict_setup"]
            for name in [*later, *(f"predict_{p}" for p in TIMED_PRECISIONS)]:
                stages.not_run(name, "the data stage failed")
        else:
            stages.run("loader", lambda: loader_alone(args, data_dir, device))
            for precision, skipped in device.precisions().items():
                name = f"train_{precision}"
                if skipped:
                    stages.skip(name, skipped)
                else:
                    stages.run(name, lambda p=precision: train_stage(args, data_dir, work, device, p))
            bench: list[PredictorBench] = []

            def predictor_setup() -> dict[str, Any]:
                bench.append(PredictorBench(args, data_dir, work, device))
                return {"images": bench[0].n_images, "checkpoint_mib": bench[0].checkpoint_mib}

            if not stages.run("predict_setup", predictor_setup):
                for precision in TIMED_PRECISIONS:
                    stages.not_run(f"predict_{precision}", "predict_setup failed")
            else:
                for precision, skipped in device.precisions().items():
                    name = f"predict_{precision}"
                    if skipped:
                        stages.skip(name, skipped)
                    else:
                        stages.run(name, lambda p=precision: bench[0].run(p))
    report["failed_stages"] = stages.failed
    report["seconds"] = time.perf_counter() - started
    report["peak_rss_mib"] = peak_rss_mib()
    return report


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.config = SMOKE_CONFIG if args.smoke else GPU_CONFIG
    check_output_file(args.out, "the benchmark's JSON (--out)")
    if args.work_dir is not None:
        check_output_dir(args.work_dir, "the benchmark's work folder (--work-dir)")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    with atomic_output(args.out, "the benchmark's JSON (--out)") as temporary:
        temporary.write_text(json.dumps(strict_json(report), indent=2, allow_nan=False) + "\n")
    failed = report["failed_stages"]
    print(
        f"wrote {args.out} in {report['seconds']:.1f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
