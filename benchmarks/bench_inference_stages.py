"""Where the end-to-end time of inference goes, per image, for the ``cpu_small`` member of
``bench_backends`` under each backend and precision: decoding, normalising, the network, resizing to
256x1600, post-processing, RLE and writing the CSV, each stage's functions timed inside one whole
inference run (wall-clock, so a stage's share is exact and nothing overlaps); "other" is the rest
(collating, flips, activation, copies, the loop).

    .venv/bin/python -m benchmarks.bench_inference_stages --runs-dir RUNS --images 64 --batch-size 2
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks.common import doc_parser
from benchmarks.inference_timing import (
    add_common_arguments,
    backend_images,
    backend_predictors,
    cpu_description,
    end_to_end_rate,
    parse,
)
from common_blocks.data import datasets, rle
from common_blocks.inference import predictor as predictor_module
from common_blocks.inference import submission
from common_blocks.inference.predictor import EnsemblePredictor
from common_blocks.training.network import DefectNetwork

# The stages: (module, attribute) of the functions whose calls make each stage, none inside another.
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
        f"\nwhere the time goes, ms per image ({len(ids)} {'real' if real else 'synthetic'} images, batch "
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
    parser = doc_parser(__doc__)
    add_common_arguments(parser)
    stage_profile(parse(parser))


if __name__ == "__main__":
    main()
