"""Inference throughput and memory on synthetic test images (half of them defect-free).

1. End to end (JPEG decode -> members with TTA -> post-processing -> RLE -> CSV) against the members'
   networks alone on preloaded tensors (logits at the network's resolution, one pass per flip): same
   models, same images, same run. Target >= 0.85.
2. torch.compile of the members: compile time (first call) and forward images/s against eager.
3. The classifier gate on that half defect-free test set against no gate, end to end.
4. Peak RSS of a whole inference run over 1,000 and 4,000 images, each in its own process (a tiny
   untrained member, no TTA, no gate): streaming keeps it flat (target: within 10%).
5. Backends x precisions: the ``cpu_small`` member and FPN + se_resnext50_32x4d (both random init,
   exported once by ``export_ensemble``) at 256x1600, each installed backend (torch channels-last,
   OpenVINO, ONNX Runtime) in fp32 and, where the CPU has bf16 instructions, bf16: img/s of the
   network alone (preloaded batches, logits at its resolution) and end to end on the first
   ``--images`` real images of ``../shared/severstal-sample/train_images`` (that column is skipped
   when the sample is absent; the networks then run on synthetic images), no TTA, no gate. Targets:
   fastest fp32 >= 1.5x torch fp32 and bf16 >= 2.5x torch fp32 on FPN, network alone; end to end >=
   0.9 of the network alone for the backend ``--backend auto`` picks.
6. Where the end-to-end time goes, per image, for the ``cpu_small`` member of part 5 under each backend
   and precision: decoding, normalising, the network, resizing to 256x1600, post-processing, RLE and
   writing the CSV, each stage's functions timed inside one whole inference run (wall-clock, so a
   stage's share is exact and nothing overlaps); "other" is the rest (collating, flips, activation,
   copies, the loop).

Models (1-3): fold 0 of the ``--member`` segmenter and ``--gate`` classifier configs (default: the
debug ones that ``make demo`` trains) from ``--runs-dir``, else untrained ones written to the work
folder. Untrained members' maps are noise around 0.45, so they are post-processed at threshold 0.65,
which keeps their masks about as sparse as a trained model's; the numbers then time the pipeline, not
a realistic gate. The non-forward work per image is about fixed, so the ratio of part 1 depends on
how heavy the member is: the tiny debug member is the hardest case.

    .venv/bin/python -m benchmarks.bench_inference [--runs-dir runs/demo] [--member configs/debug.yaml]
        [--gate configs/debug_classifier.yaml] [--images 48] [--batch-size 4] [--workers 0 1]
        [--tta none hflip vflip] [--average probabilities|logits] [--rss-images 1000 4000]
        [--work-dir /tmp/bench_inference] [--parts 1 2 3 4 5] [--threads N]
    .venv/bin/python -m benchmarks.bench_inference --parts 5 --images 16 --batch-size 2 --repeats 1
    .venv/bin/python -m benchmarks.bench_inference --parts 6 --runs-dir RUNS --images 64 --batch-size 2

Parts 5 and 6 use a trained ``cpu_small`` (fold 0) when ``--runs-dir`` holds one, post-processed at
threshold 0.5, minimum area 500 px: then the post-processing times are those of real maps.

On a shared machine, other processes' load slows two torch threads far more than one (each parallel
region waits for a descheduled thread), so ``--threads 1`` gives the steadier ratios there.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import REAL_SAMPLE
from common_blocks.data import datasets, rle
from common_blocks.data.datasets import SegmentationDataset
from common_blocks.data.formats import list_images
from common_blocks.data.synthetic import generate
from common_blocks.deploy.backend_choice import ExportedRuntime, cpu_has_bf16
from common_blocks.deploy.export import export_ensemble, open_export
from common_blocks.deploy.onnx_runtimes import RUNTIME_PRECISIONS, installed_runtimes
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.inference import predictor as predictor_module
from common_blocks.inference import submission
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.options import PredictOptions
from common_blocks.inference.predictor import EnsemblePredictor, build_predictor
from common_blocks.inference.submission import make_submission
from common_blocks.run_folder import RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.module import DefectModule
from common_blocks.training.network import DefectNetwork

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.85
RSS_TOLERANCE = 0.10
UNTRAINED_THRESHOLD = 0.65
DEBUG_CONFIGS = (ROOT / "configs" / "debug.yaml", ROOT / "configs" / "debug_classifier.yaml")
REAL_IMAGES = REAL_SAMPLE / "train_images"
# Part 5's members: config and the overrides that build it offline (random init).
BACKEND_MEMBERS = {
    "cpu_small": (ROOT / "configs" / "cpu_small.yaml", ()),
    "fpn_se_resnext50": (ROOT / "configs" / "fpn_se_resnext50.yaml", ("model.args.encoder_weights=null",)),
}
FP32_TARGET, BF16_TARGET, END_TO_END_TARGET = 1.5, 2.5, 0.9


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


def configs(args: argparse.Namespace) -> tuple[Path, ...]:
    """The member's config, and the gate's when part 3 (the only one that uses it) runs."""
    return (args.member, args.gate) if 3 in args.parts else (args.member,)


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


class PipelineBench:
    """Parts 1-3: the same images, preloaded batches and member, built once."""

    def __init__(self, args: argparse.Namespace, runs_dir: Path, trained: bool) -> None:
        self.args, self.runs_dir, self.trained = args, runs_dir, trained
        self.images_dir = synthetic_test_images(args.work_dir, args.images)
        self.ids = list_images(self.images_dir)
        self.ensemble = self.predictor(gate=False)
        self.batches = preload(self.images_dir, self.ids, args.batch_size, self.ensemble.grayscale)
        self.end_to_end(self.ensemble, 0)()  # warm-up: first calls of every kernel and of numba

    def predictor(self, gate: bool) -> EnsemblePredictor:
        args = self.args
        return predictor(self.runs_dir, self.trained, configs(args), args.tta, gate, args.average)

    def end_to_end(self, predictor: EnsemblePredictor, workers: int) -> Callable[[], float]:
        return lambda: end_to_end_rate(predictor, self.images_dir, self.ids, self.args.batch_size, workers)

    def forward(self, predictor: EnsemblePredictor) -> Callable[[], float]:
        return lambda: forward_rate(predictor, self.batches)

    def end_to_end_vs_forward(self) -> None:
        args = self.args
        print(
            f"\n1. end to end vs forward passes alone ({len(self.ids)} images, batch {args.batch_size}, "
            f"TTA {'+'.join(args.tta)}, average {args.average})"
        )
        rates = in_turns(
            {"forward": self.forward(self.ensemble)}
            | {f"{w} worker(s)": self.end_to_end(self.ensemble, w) for w in args.workers},
            args.repeats,
        )
        forward = rates.pop("forward")
        print(f"   forward passes alone: {forward:6.2f} img/s")
        for name, rate in rates.items():
            verdict = "meets" if rate / forward >= TARGET_RATIO else "is below"
            print(
                f"   end to end, {name}: {rate:6.2f} img/s = {rate / forward:.2f} of forward "
                f"({verdict} {TARGET_RATIO})"
            )

    def compile(self) -> None:
        print("\n2. torch.compile (inductor, empty compile cache) of the member, forward passes alone")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_", dir=self.args.work_dir)
        compiled = self.predictor(gate=False)
        for model in compiled.segmenters:
            model.module.model = torch.compile(model.module.model, dynamic=False)
        try:
            start = time.perf_counter()
            forward_rate(compiled, self.batches[:1])
            compile_seconds = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - report why compile is unavailable here, then go on
            print(f"   unavailable here: {type(error).__name__}: {str(error).splitlines()[0]}")
            return
        rates = in_turns(
            {"eager": self.forward(self.ensemble), "compiled": self.forward(compiled)}, self.args.repeats
        )
        compiled_rate, eager_rate = rates["compiled"], rates["eager"]
        print(
            f"   first batch (compiles): {compile_seconds:.1f} s; then compiled {compiled_rate:6.2f} img/s "
            f"vs eager {eager_rate:6.2f} img/s ({compiled_rate / eager_rate:.2f}x)"
        )

    def gate(self) -> None:
        print("\n3. the gate on a half defect-free test set, end to end")
        gated = self.predictor(gate=True)
        workers = self.args.workers[0]
        self.end_to_end(gated, workers)()  # warm-up, and the count of images the gate lets through
        segmented = gated.segmented_images
        rates = in_turns(
            {"no gate": self.end_to_end(self.ensemble, workers), "gate": self.end_to_end(gated, workers)},
            self.args.repeats,
        )
        print(
            f"   no gate: {rates['no gate']:6.2f} img/s; gate: {rates['gate']:6.2f} img/s "
            f"({rates['gate'] / rates['no gate']:.2f}x); the gate let {segmented} of {len(self.ids)} "
            "images through"
        )


def peak_rss_of_process_image() -> float:
    """Peak RSS in MiB of this process since it started its program (VmHWM). Not ru_maxrss: Linux
    carries that over exec from the forked parent, so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_child(args) -> None:
    """One inference run over the first ``--rss-child`` images; prints its peak RSS in MiB (this
    process, where the rows accumulate; the loader worker's memory does not depend on the count)."""
    images_dir = synthetic_test_images(args.work_dir, max(args.rss_images))
    runs_dir, _ = models(args.runs_dir, args.work_dir, DEBUG_CONFIGS, ("data.scale=0.125",))
    ensemble = predictor(runs_dir, False, DEBUG_CONFIGS, ["none"], gate=False)
    ids = list_images(images_dir)[: args.rss_child]
    rate = end_to_end_rate(ensemble, images_dir, ids, args.batch_size, args.workers[-1])
    print(f"{peak_rss_of_process_image():.1f} {rate:.2f}")


def compare_memory(args) -> None:
    synthetic_test_images(args.work_dir, max(args.rss_images))
    print(f"\n4. peak RSS of whole runs (tiny untrained member at 32x200, no TTA, batch {args.batch_size})")
    for workers in args.workers:
        peaks = {}
        for n_images in args.rss_images:
            command = [
                sys.executable,
                "-m",
                "benchmarks.bench_inference",
                "--rss-child",
                str(n_images),
                "--work-dir",
                str(args.work_dir),
                "--runs-dir",
                str(args.runs_dir),
                "--batch-size",
                str(args.batch_size),
                "--workers",
                str(workers),
                "--rss-images",
                *map(str, args.rss_images),
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
            peaks[n_images] = float(output[0])
            print(
                f"   {workers} worker(s), {n_images:5d} images: peak RSS {peaks[n_images]:7.1f} MiB "
                f"({float(output[1]):.1f} img/s)"
            )
        low, high = min(peaks.values()), max(peaks.values())
        verdict = "within" if high <= low * (1 + RSS_TOLERANCE) else "NOT within"
        print(f"   {workers} worker(s): largest / smallest = {high / low:.3f}: {verdict} {RSS_TOLERANCE:.0%}")


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
    """Part 5's one-member ensemble of ``name`` (fold 0, no TTA, no gate), its export, and whether it
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
        if backend == "torch" or precision in RUNTIME_PRECISIONS[backend]
    }


def backend_images(args: argparse.Namespace) -> tuple[Path, list[str], bool]:
    """Parts 5 and 6's images: the first ``--images`` of the real sample's train images (whether
    they are real), else synthetic ones."""
    real = REAL_IMAGES.is_dir()
    images_dir = REAL_IMAGES if real else synthetic_test_images(args.work_dir, args.images)
    return images_dir, list_images(images_dir)[: args.images], real


def backends_and_precisions(args: argparse.Namespace) -> None:
    images_dir, ids, real = backend_images(args)
    print(
        f"\n5. backends x precisions at 256x1600 ({len(ids)} {'real' if real else 'synthetic'} images, batch "
        f"{args.batch_size}, no TTA, {torch.get_num_threads()} thread(s); {cpu_description()})"
    )
    for name in args.backend_members:
        predictors = backend_predictors(args, name, images_dir)
        batches = preload(images_dir, ids, args.batch_size, next(iter(predictors.values())).grayscale)
        measures = {}
        for key, ensemble in predictors.items():
            forward_rate(ensemble, batches[:1])  # warm-up: first calls of every kernel
            measures[(*key, "network")] = lambda e=ensemble, b=batches: forward_rate(e, b)
            if real:
                measures[(*key, "end to end")] = lambda e=ensemble: end_to_end_rate(
                    e, images_dir, ids, args.batch_size, 0, args.work_dir / "bench_submission.csv"
                )
        rates = in_turns(measures, args.repeats)
        print(f"   {name}: backend, precision: network alone / end to end img/s (end to end / network)")
        for backend, precision in predictors:
            network = rates[(backend, precision, "network")]
            whole = rates.get((backend, precision, "end to end"))
            tail = (
                f" / {whole:6.2f} ({whole / network:.2f})" if whole is not None else " / - (no real images)"
            )
            print(f"     {backend:12s} {precision}: {network:6.2f}{tail}")
        torch_fp32 = rates[("torch", "fp32", "network")]
        for precision, target in (("fp32", FP32_TARGET), ("bf16", BF16_TARGET)):
            candidates = {b: r for (b, p, part), r in rates.items() if p == precision and part == "network"}
            if candidates:
                best = max(candidates, key=candidates.get)
                ratio = candidates[best] / torch_fp32
                verdict = "meets" if ratio >= target else "is below"
                print(f"     fastest {precision}: {best} {ratio:.2f}x torch fp32 ({verdict} {target}x)")


# Part 6's stages: (module, attribute) of the functions whose calls make each stage, none inside another.
STAGES: dict[str, tuple[tuple[object, str], ...]] = {
    "decode": ((datasets, "read_image"),),
    "normalise": ((datasets, "to_tensor"),),
    "network": ((EnsemblePredictor, "network_logits"),),
    "resize": ((DefectNetwork, "to_input_size"),),
    "post-process": ((predictor_module, "postprocess_mask"),),
    "RLE": ((rle, "encode"),),
    "check + CSV": ((submission, "check_predictions"), (submission, "write_submission")),
}


@contextlib.contextmanager
def stage_timers() -> Iterator[dict[str, float]]:
    """Seconds spent in each of ``STAGES`` while the context is open: its functions are wrapped in
    timers, and put back on exit."""
    seconds = dict.fromkeys(STAGES, 0.0)
    originals = []

    def timed(stage: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - start

        return wrapper

    for stage, places in STAGES.items():
        for owner, attribute in places:
            original = getattr(owner, attribute)
            originals.append((owner, attribute, original))
            setattr(owner, attribute, timed(stage, original))
    try:
        yield seconds
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


def stage_profile(args: argparse.Namespace) -> None:
    images_dir, ids, real = backend_images(args)
    print(
        f"\n6. where the time goes, ms per image ({len(ids)} {'real' if real else 'synthetic'} images, batch "
        f"{args.batch_size}, no TTA, decoding in the process, {torch.get_num_threads()} thread(s); "
        f"{cpu_description()}); 'other' is the time outside the stages"
    )
    predictors = backend_predictors(args, "cpu_small", images_dir)
    print("   " + " ".join(f"{name:>13s}" for name in ("backend", *STAGES, "other", "total")))
    for (backend, precision), ensemble in predictors.items():
        end_to_end_rate(ensemble, images_dir, ids[: args.batch_size], args.batch_size, 0)  # warm-up
        best: dict[str, float] | None = None
        for _ in range(args.repeats):
            with stage_timers() as seconds:
                start = time.perf_counter()
                end_to_end_rate(
                    ensemble, images_dir, ids, args.batch_size, 0, args.work_dir / "bench_submission.csv"
                )
                total = time.perf_counter() - start
            if best is None or total < best["total"]:
                best = {**seconds, "other": total - sum(seconds.values()), "total": total}
        cells = " ".join(f"{1000 * value / len(ids):13.2f}" for value in best.values())
        print(f"   {backend + ' ' + precision:>13s} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "demo", help="trained runs")
    parser.add_argument("--member", type=Path, default=DEBUG_CONFIGS[0], help="segmenter config (parts 1-3)")
    parser.add_argument("--gate", type=Path, default=DEBUG_CONFIGS[1], help="classifier config (part 3)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_inference"), help="images, models")
    parser.add_argument("--images", type=int, default=48, help="images for parts 1-3 and 5")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="loader workers to time")
    parser.add_argument("--tta", nargs="+", default=["none", "hflip", "vflip"])
    parser.add_argument("--average", choices=["probabilities", "logits"], default="probabilities")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best is kept)")
    parser.add_argument("--rss-images", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4, 5, 6])
    parser.add_argument(
        "--backend-members",
        nargs="+",
        choices=list(BACKEND_MEMBERS),
        default=list(BACKEND_MEMBERS),
        help="part 5's",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    if {1, 2, 3} & set(args.parts):
        runs_dir, trained = models(args.runs_dir, args.work_dir, configs(args))
        kind = "trained" if trained else "untrained"
        print(
            f"{kind} {' and '.join(path.stem for path in configs(args))} from {runs_dir}; "
            f"{torch.get_num_threads()} torch thread(s)"
        )
        bench = PipelineBench(args, runs_dir, trained)
        parts = {1: bench.end_to_end_vs_forward, 2: bench.compile, 3: bench.gate}
        for part in sorted({1, 2, 3} & set(args.parts)):
            parts[part]()
    if 4 in args.parts:
        compare_memory(args)
    if 5 in args.parts:
        backends_and_precisions(args)
    if 6 in args.parts:
        stage_profile(args)


if __name__ == "__main__":
    main()
