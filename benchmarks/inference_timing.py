"""Shared parts of the inference benchmarks (``bench_inference_*``, ``bench_backends``): synthetic
test images, fold 0 of a member (trained from ``--runs-dir`` or untrained), its predictor, the two
rates every one of them compares (a whole inference run against the networks alone), the members of
the backend benchmarks, and their common arguments.

Untrained members' maps are noise around 0.45, so they are post-processed at threshold 0.65, which
keeps their masks about as sparse as a trained model's; the numbers then time the pipeline, not a
realistic gate. On a shared machine, other processes' load slows two torch threads far more than one
(each parallel region waits for a descheduled thread), so ``--threads 1`` gives the steadier ratios.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import REAL_SAMPLE
from common_blocks.backend_names import RUNTIMES, cpu_has_bf16
from common_blocks.data.datasets import SegmentationDataset
from common_blocks.data.formats import list_images
from common_blocks.data.synthetic import generate
from common_blocks.deploy.backend_choice import ExportedRuntime
from common_blocks.deploy.export import export_ensemble, open_export
from common_blocks.deploy.onnx_runtimes import installed_runtimes
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.options import PredictOptions
from common_blocks.inference.predictor import EnsemblePredictor, build_predictor
from common_blocks.inference.submission import make_submission
from common_blocks.run_folder import RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.module import DefectModule

ROOT = Path(__file__).resolve().parents[1]
UNTRAINED_THRESHOLD = 0.65
DEBUG_CONFIGS = (ROOT / "configs" / "debug.yaml", ROOT / "configs" / "debug_classifier.yaml")
REAL_IMAGES = REAL_SAMPLE / "train_images"
# The backend benchmarks' members: config and the overrides that build it offline (random init).
BACKEND_MEMBERS = {
    "cpu_small": (ROOT / "configs" / "cpu_small.yaml", ()),
    "fpn_se_resnext50": (ROOT / "configs" / "fpn_se_resnext50.yaml", ("model.args.encoder_weights=null",)),
}


def add_common_arguments(parser: argparse.ArgumentParser, images: int = 48) -> None:
    """``--runs-dir``, ``--work-dir``, ``--images``, ``--batch-size``, ``--repeats``, ``--threads``."""
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "demo", help="trained runs")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_inference"), help="images, models")
    parser.add_argument("--images", type=int, default=images, help="test images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best is kept)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")


def add_backend_members(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend-members", nargs="+", choices=list(BACKEND_MEMBERS), default=list(BACKEND_MEMBERS)
    )


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, with ``--threads`` applied."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def synthetic_test_images(work_dir: Path, n_images: int) -> Path:
    """A folder of ``n_images`` synthetic test images, made once and reused."""
    data = work_dir / f"data_{n_images}"
    if not (data / "sample_submission.csv").is_file():
        generate(data, n_train=0, n_test=n_images, seed=5, overwrite=True)
    return data / "test_images"


def models(
    runs_dir: Path, work_dir: Path, configs: tuple[Path, ...], overrides: tuple[str, ...] = ()
) -> tuple[Path, bool]:
    """A runs folder holding fold 0 of the member (and gate) ``configs``, and whether they are trained:
    ``runs_dir`` when it has both and there are no config ``overrides``, else untrained ones written
    to the work folder."""
    cfgs = [load_config(path, list(overrides)) for path in configs]
    trained = all(RunPaths.of(runs_dir, cfg.name, 0).best.is_file() for cfg in cfgs)
    if trained and not overrides:
        return runs_dir, True
    variant = "_".join(overrides) or "as_configured"
    untrained = work_dir / f"untrained_runs_{'_'.join(cfg.name for cfg in cfgs)}_{variant}"
    import lightning  # after common_blocks.training, which makes torchvision importable for it

    for cfg in cfgs:
        torch.manual_seed(0)
        trainer = lightning.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
        )
        trainer.strategy.connect(DefectModule(cfg.model_dump(mode="json"), 0))
        trainer.save_checkpoint(
            RunPaths.of(untrained, cfg.name, 0).best, weights_only=False
        )  # as training does
    return untrained, False


def predictor(
    runs_dir: Path,
    trained: bool,
    configs: tuple[Path, ...],
    tta: list[str],
    gate: bool,
    average: str = "probabilities",
) -> EnsemblePredictor:
    """The member of ``configs[0]`` alone, or gated by ``configs[1]``."""
    cfg = EnsembleConfig.model_validate(
        {
            "name": "bench",
            "runs_dir": runs_dir,
            "members": [{"config": str(configs[0]), "folds": [0]}],
            "tta": tta,
            "average": average,
            "gate": {"config": str(configs[1]), "folds": [0]} if gate else None,
        }
    )
    threshold = 0.5 if trained else UNTRAINED_THRESHOLD
    postprocess = PostprocessConfig(classes=(ClassPostprocess(threshold=threshold, gate=0.5),) * 4)
    return build_predictor(cfg, postprocess=postprocess, device="cpu")


def end_to_end_rate(
    predictor: EnsemblePredictor,
    images_dir: Path,
    ids: list[str],
    batch: int,
    workers: int,
    out: Path | None = None,
) -> float:
    """Images/s of a whole inference run: decode, predict, post-process, encode, write the CSV (to
    ``out``, default beside the images)."""
    start = time.perf_counter()
    make_submission(
        predictor,
        images_dir,
        ids,
        out or images_dir.parent / "bench_submission.csv",
        options=PredictOptions(batch_size=batch, workers=workers),
    )
    return len(ids) / (time.perf_counter() - start)


@torch.inference_mode()
def forward_rate(predictor: EnsemblePredictor, batches: list[torch.Tensor]) -> float:
    """Images/s of the members' networks alone (every TTA flip) as the predictor's backend runs them,
    on preloaded normalised batches: their logits at the network's own resolution, nothing resized,
    flipped back or activated."""
    start = time.perf_counter()
    for images in batches:
        for model in predictor.segmenters:
            for dims in predictor.tta:
                predictor.network_logits(model, images.flip(dims) if dims else images)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def preload(images_dir: Path, ids: list[str], batch: int, grayscale: bool) -> list[torch.Tensor]:
    dataset = SegmentationDataset(
        pd.DataFrame({"ImageId": ids}), images_dir, with_masks=False, grayscale=grayscale
    )
    items = [dataset[i]["image"] for i in range(len(dataset))]
    return [torch.stack(items[i : i + batch]) for i in range(0, len(items), batch)]


def in_turns(rates: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """The best of ``repeats`` runs of each measure, run in turns (A, B, A, B, ...) so that load from
    other processes on a shared machine weighs on each alike."""
    best = dict.fromkeys(rates, 0.0)
    for _ in range(repeats):
        for name, rate in rates.items():
            best[name] = max(best[name], rate())
    return best


def cpu_description() -> str:
    """The CPU's model name and whether it has the bf16 instructions (from /proc/cpuinfo)."""
    text = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "?"
    )
    flags = set(
        next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), [])
    )
    return f"{model}; " + ", ".join(
        f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx512_bf16", "amx_bf16")
    )


def backend_member(args: argparse.Namespace, name: str, data_dir: Path) -> tuple[EnsembleConfig, Path, bool]:
    """The backend benchmarks' one-member ensemble of ``name`` (fold 0, no TTA, no gate), its export, and whether it
    is trained (``--runs-dir`` holds it and it needs no overrides) or untrained."""
    config, overrides = BACKEND_MEMBERS[name]
    runs_dir, trained = models(args.runs_dir, args.work_dir, (config,), overrides)
    cfg = EnsembleConfig.model_validate(
        {
            "name": f"bench_{name}",
            "runs_dir": runs_dir,
            "data_dir": data_dir,
            "members": [{"config": str(config), "folds": [0]}],
            "tta": ["none"],
            "postprocess": {"thresholds_file": args.work_dir / "no_thresholds.json"},
        }
    )
    folder = args.work_dir / f"export_{name}_{'trained' if trained else 'untrained'}"
    start = time.perf_counter()
    export_ensemble(cfg, folder, installed_runtimes(), overwrite=True)
    print(
        f"   {name} ({'trained' if trained else 'untrained'}): exported and checked under "
        f"{', '.join(installed_runtimes())} in {time.perf_counter() - start:.0f} s"
    )
    return cfg, folder, trained


def bench_postprocess(trained: bool) -> PostprocessConfig:
    """A trained member's maps at threshold 0.5 and minimum area 500 px (the validation's untuned
    setting); an untrained one's at ``UNTRAINED_THRESHOLD``, which keeps its noise about as sparse."""
    if trained:
        return PostprocessConfig(classes=(ClassPostprocess(threshold=0.5, min_area=500),) * 4)
    return PostprocessConfig(classes=(ClassPostprocess(threshold=UNTRAINED_THRESHOLD),) * 4)


def backend_predictors(
    args: argparse.Namespace, name: str, images_dir: Path
) -> dict[tuple[str, str], EnsemblePredictor]:
    """``name``'s member under torch and each installed runtime, in fp32 and (where the CPU has bf16
    instructions and the backend runs it) bf16, keyed by (backend, precision)."""
    cfg, folder, trained = backend_member(args, name, images_dir.parent)
    export = open_export(folder)
    precisions = ["fp32", *(["bf16"] if cpu_has_bf16() else [])]
    return {
        (backend, precision): build_predictor(
            cfg,
            postprocess=bench_postprocess(trained),
            device="cpu",
            precision=precision,
            runtime=None if backend == "torch" else ExportedRuntime(backend, lambda e=export: e),
        )
        for backend in ("torch", *installed_runtimes())
        for precision in precisions
        if backend == "torch" or precision in RUNTIMES[backend].precisions
    }


def backend_images(args: argparse.Namespace) -> tuple[Path, list[str], bool]:
    """The backend benchmarks' images: the first ``--images`` of the real sample's train images (whether
    they are real), else synthetic ones."""
    real = REAL_IMAGES.is_dir()
    images_dir = REAL_IMAGES if real else synthetic_test_images(args.work_dir, args.images)
    return images_dir, list_images(images_dir)[: args.images], real


class PipelineBench:
    """One member (gated by a classifier when ``configs`` names one) on ``--images`` synthetic test
    images: the images, their preloaded batches and the predictor, built once."""

    def __init__(self, args: argparse.Namespace, configs: tuple[Path, ...]) -> None:
        self.args, self.configs = args, configs
        self.runs_dir, self.trained = models(args.runs_dir, args.work_dir, configs)
        kind = "trained" if self.trained else "untrained"
        print(
            f"{kind} {' and '.join(path.stem for path in configs)} from {self.runs_dir}; "
            f"{torch.get_num_threads()} torch thread(s)"
        )
        self.images_dir = synthetic_test_images(args.work_dir, args.images)
        self.ids = list_images(self.images_dir)
        self.ensemble = self.predictor(gate=False)
        self.batches = preload(self.images_dir, self.ids, args.batch_size, self.ensemble.grayscale)
        self.end_to_end(self.ensemble, 0)()  # warm-up: first calls of every kernel and of numba

    def predictor(self, gate: bool) -> EnsemblePredictor:
        args = self.args
        return predictor(self.runs_dir, self.trained, self.configs, args.tta, gate, args.average)

    def end_to_end(self, predictor: EnsemblePredictor, workers: int) -> Callable[[], float]:
        return lambda: end_to_end_rate(predictor, self.images_dir, self.ids, self.args.batch_size, workers)

    def forward(self, predictor: EnsemblePredictor) -> Callable[[], float]:
        return lambda: forward_rate(predictor, self.batches)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The member, its TTA and averaging, and the loader workers of ``PipelineBench``."""
    add_common_arguments(parser)
    parser.add_argument("--member", type=Path, default=DEBUG_CONFIGS[0], help="segmenter config")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="loader workers to time")
    parser.add_argument("--tta", nargs="+", default=["none", "hflip", "vflip"])
    parser.add_argument("--average", choices=["probabilities", "logits"], default="probabilities")
