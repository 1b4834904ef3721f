"""Post-processing search at the full competition scale, and the per-image cost of the OOF statistics.

    python -m benchmarks.bench_threshold_search [--images 12568] [--repeats 3]

The search runs on synthetic OOF statistics of 12,568 images (47% defect-free, class rates as in
the competition, areas shrinking with the threshold and the minimum component size) with classifier
probabilities attached, so every gate counts, on the default grid and on one of 16 thresholds.
``image_stats`` is timed on 256x1600 probability maps of three kinds: sparse blobs (what a trained
model gives), smooth noise (every pixel near the thresholds, large components) and uniform noise
(the worst case: the whole image above the lowest threshold, in a maze of tiny components).
"""

from __future__ import annotations

import functools
import time

import cv2
import numpy as np

from benchmarks.common import best_time, doc_parser, peak_rss_mib
from common_blocks.evaluation.image_stats import image_stats
from common_blocks.evaluation.metric import summarize
from common_blocks.evaluation.oof_stats import N_CLASSES, OofStats
from common_blocks.evaluation.search_grid import DEFAULT_MIN_SIZES, DEFAULT_THRESHOLDS
from common_blocks.evaluation.threshold_search import evaluate, search

IMAGE_SHAPE = (256, 1600)
CLASS_RATES = (0.14, 0.04, 0.8, 0.13)  # share of defect images with each class
STATS_THRESHOLDS = tuple(np.round(np.linspace(0.20, 0.95, 16), 2))  # T=16 for the per-image timing


def synthetic_stats(
    n_images: int,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES,
    image_shape: tuple[int, int] = IMAGE_SHAPE,
    seed: int = 0,
) -> OofStats:
    """Plausible statistics built directly: no image is made."""
    rng = np.random.default_rng(seed)
    pixels = image_shape[0] * image_shape[1]
    shape = (n_images, N_CLASSES)
    has_defect = rng.random(n_images) > 0.47
    present = has_defect[:, None] & (rng.random(shape) < CLASS_RATES)
    present[has_defect & ~present.any(axis=1), 2] = True  # a defect image has at least one class
    truth_area = np.where(present, np.clip(rng.lognormal(np.log(4000), 1.2, shape), 30, pixels // 2), 0)
    false_positive = ~present & (rng.random(shape) < 0.3)
    base_area = np.where(present, truth_area * rng.lognormal(0, 0.4, shape), 0)
    base_area = np.where(false_positive, rng.lognormal(np.log(800), 1.2, shape), base_area)
    # The area shrinks with the threshold (at an image-dependent pace) and loses its small components.
    pace = rng.uniform(0.5, 2.0, shape)[..., None]
    threshold_area = base_area[..., None] * (1 - np.linspace(0, 0.7, len(thresholds))) ** pace
    small_share = rng.uniform(0, 0.3, shape)[..., None, None]
    sizes = np.asarray(min_sizes, dtype=np.float64)
    kept = 1 - small_share * np.minimum(sizes / 800, 1)
    area = np.floor(np.minimum(threshold_area[..., None] * kept, pixels))
    area = np.where(area < sizes, 0, area)
    # Higher thresholds keep less but more precise area, so the best threshold is not at an end.
    precision = np.linspace(0.6, 1.0, len(thresholds))[:, None]
    overlap = rng.uniform(0.6, 1.0, shape)[..., None, None] * precision
    intersection = np.floor(np.minimum(area, truth_area[..., None, None]) * overlap)
    gate = np.where(present, rng.beta(5, 2, shape), rng.beta(2, 5, shape))
    return OofStats(
        image_ids=np.asarray([f"{i:09x}.jpg" for i in range(n_images)]),
        folds=rng.integers(0, 5, n_images),
        thresholds=np.asarray(thresholds),
        min_sizes=np.asarray(min_sizes),
        fill_holes=(False,) * N_CLASSES,
        area=area.astype(np.uint32),
        intersection=intersection.astype(np.uint32),
        truth_area=truth_area.astype(np.uint32),
        gate=gate,
    )


def probability_maps(kind: str, rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """(4, H, W) float32 maps of one kind (see the module docstring)."""
    if kind == "uniform noise":
        return rng.random((N_CLASSES, *shape), dtype=np.float32)
    maps = np.empty((N_CLASSES, *shape), np.float32)
    for k in range(N_CLASSES):
        if kind == "smooth noise":
            blurred = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), 8)
            maps[k] = (blurred - blurred.min()) / (blurred.max() - blurred.min())
        else:
            canvas = np.zeros(shape, np.float32)
            for _ in range(rng.integers(0, 4)):
                center = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
                axes = (int(rng.integers(10, 200)), int(rng.integers(5, 60)))
                cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            blurred = cv2.GaussianBlur(canvas, (0, 0), 6) * rng.uniform(0.5, 1.0)
            maps[k] = np.clip(blurred + rng.normal(0, 0.03, shape).astype(np.float32), 0, 1)
    return maps


def ms_per_image(kind: str, thresholds: tuple[float, ...], fill: bool, repeats: int, seed: int = 1) -> float:
    """Mean over 4 images of the best of ``repeats`` timings of ``image_stats``, in milliseconds."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((N_CLASSES, *IMAGE_SHAPE)) < 0.02).astype(np.uint8)
    seconds = [
        best_time(
            functools.partial(
                image_stats,
                probability_maps(kind, rng),
                truth,
                thresholds,
                DEFAULT_MIN_SIZES,
                (fill,) * N_CLASSES,
            ),
            repeats,
        )
        for _ in range(4)
    ]
    return float(np.mean(seconds)) * 1e3


def time_image_stats(repeats: int) -> None:
    ms_per_image("sparse blobs", DEFAULT_THRESHOLDS, False, 1)  # compile the numba kernel
    print(f"image_stats per 256x1600 image (4 classes, best of {repeats}, mean over 4 images):")
    for thresholds, label in ((STATS_THRESHOLDS, "T=16"), (DEFAULT_THRESHOLDS, "T=11 default")):
        for fill in (False, True):
            grid = f"{label}, M={len(DEFAULT_MIN_SIZES)}, fill_holes={fill}"
            for kind in ("sparse blobs", "smooth noise", "uniform noise"):
                print(f"  {grid:<36} {kind:<14} {ms_per_image(kind, thresholds, fill, repeats):7.1f} ms")


def time_search(n_images: int, thresholds: tuple[float, ...]) -> None:
    start = time.perf_counter()
    stats = synthetic_stats(n_images, thresholds)
    built = time.perf_counter() - start
    start = time.perf_counter()
    result = search(stats)
    searched = time.perf_counter() - start
    start = time.perf_counter()
    summary = summarize(evaluate(stats, result.config))
    evaluated = time.perf_counter() - start
    settings = stats.thresholds.size * stats.min_sizes.size * result.min_areas.size * result.gates.size
    print(
        f"search: {stats.n_images} images x {N_CLASSES} classes x {settings} settings "
        f"({stats.thresholds.size} thresholds x {stats.min_sizes.size} min sizes x "
        f"{result.min_areas.size} min areas x {result.gates.size} gates), stats built in {built:.2f} s"
    )
    print(f"  search   {searched:6.2f} s   (best score {result.score:.5f})")
    print(f"  evaluate {evaluated:6.3f} s   (score {summary.score:.5f})")


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument("--images", type=int, default=12568)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    baseline = peak_rss_mib()
    for thresholds in (DEFAULT_THRESHOLDS, STATS_THRESHOLDS):
        time_search(args.images, thresholds)
    print(f"  peak RSS {peak_rss_mib():.0f} MiB (after imports {baseline:.0f} MiB)")
    time_image_stats(args.repeats)


if __name__ == "__main__":
    main()
