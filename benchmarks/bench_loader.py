"""Training loader throughput: images/s per DataLoader worker for the default train pipeline.

SegmentationDataset + build_train_transform(AugmentConfig()) (256x416 crops, flips, brightness/
contrast) on the real 256x1600 sample, batch 8, random items.

Two measures per num_workers setting:
- wall: images/s the training loop receives, leaving out the first batch (worker start-up);
  best of ``--repeats`` runs, because other processes on a shared machine slow single runs down.
- CPU: CPU seconds the loading processes spent per image (the workers, or this process when
  num_workers=0; first batch included), and its inverse, img/s per worker with a core to itself.
  Insensitive to other load, so it is the figure to compare between changes.
A per-stage breakdown of one item, in this process, shows where the time goes.

    .venv/bin/python -m benchmarks.bench_loader [--data-dir DIR] [--images 400] [--workers 0 1 2] [--repeats 3]
"""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, RandomSampler

from benchmarks.common import REAL_SAMPLE, doc_parser
from common_blocks.data.augment_config import AugmentConfig
from common_blocks.data.datasets import SegmentationDataset, mask_to_tensor, to_tensor
from common_blocks.data.formats import read_labels
from common_blocks.data.images import read_image
from common_blocks.data.transforms import build_train_transform

TARGET_PER_WORKER = 150.0
BATCH_SIZE = 8


@dataclass
class LoaderRun:
    wall_rate: float  # images/s received after the first batch
    cpu_ms_per_image: float  # CPU of the loading processes, whole run


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def time_loader(dataset: SegmentationDataset, num_workers: int, n_images: int) -> LoaderRun:
    """One pass over ``n_images`` random items plus an untimed first batch."""
    total = n_images + BATCH_SIZE
    sampler = RandomSampler(dataset, replacement=True, num_samples=total)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=num_workers)
    # Workers are child processes; their CPU time is counted once the exhausted loader joins them.
    loading = resource.RUSAGE_CHILDREN if num_workers else resource.RUSAGE_SELF
    cpu_before = _cpu_seconds(loading)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    seen = sum(len(batch["image_id"]) for batch in batches)
    wall = time.perf_counter() - start
    return LoaderRun(seen / wall, 1000 * (_cpu_seconds(loading) - cpu_before) / total)


def stage_times(dataset: SegmentationDataset, n_images: int) -> dict[str, float]:
    """Milliseconds per image of each step of ``dataset[i]``, run in this process."""
    totals: dict[str, float] = defaultdict(float)

    def timed(name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = function(*args, **kwargs)
        totals[name] += time.perf_counter() - start
        return result

    for index in range(n_images):
        image = timed("read JPEG", read_image, dataset.images_dir / dataset.image_ids[index])
        mask = timed("decode RLE", dataset.decode_masks, index, image.shape[:2])
        augmented = timed("augment", dataset.transform, image=image, mask=mask)
        timed("image to tensor", to_tensor, augmented["image"])
        timed("mask to tensor", mask_to_tensor, augmented["mask"])
    return {name: 1000 * total / n_images for name, total in totals.items()}


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument(
        "--data-dir", type=Path, default=REAL_SAMPLE, help="folder with train.csv and train_images/"
    )
    parser.add_argument("--images", type=int, default=400, help="timed images per run")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers values to time"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per num_workers setting")
    args = parser.parse_args()
    if not (args.data_dir / "train.csv").is_file():
        print(f"skipped: no train.csv in {args.data_dir} (pass --data-dir)")
        return

    # Set this process up like a DataLoader worker, so num_workers=0 and the stage times show
    # what one worker does, without handing batches between processes.
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    images_dir = args.data_dir / "train_images"
    table = read_labels(args.data_dir / "train.csv", images_dir)
    dataset = SegmentationDataset(table, images_dir, transform=build_train_transform(AugmentConfig(), seed=0))
    dataset[0]  # compile the numba RLE decoder before any timing
    print(
        f"{len(dataset)} images in {images_dir}; default AugmentConfig, batch {BATCH_SIZE}, {os.cpu_count()} CPU cores"
    )

    print("\nper-stage wall time of one item, this process (ms/image):")
    for name, milliseconds in stage_times(dataset, min(args.images, len(dataset))).items():
        print(f"  {name:<16} {milliseconds:6.2f}")

    print(
        f"\n{'workers':>7} {'wall img/s':>11} {'wall img/s/worker':>18} {'CPU ms/img':>11} {'CPU img/s/worker':>17}"
    )
    cpu_rate = {}
    for num_workers in args.workers:
        runs = [time_loader(dataset, num_workers, args.images) for _ in range(args.repeats)]
        wall_rate = max(run.wall_rate for run in runs)
        cpu_ms = min(run.cpu_ms_per_image for run in runs)
        cpu_rate[num_workers] = 1000 / cpu_ms
        print(
            f"{num_workers:>7} {wall_rate:>11.1f} {wall_rate / max(num_workers, 1):>18.1f} "
            f"{cpu_ms:>11.2f} {cpu_rate[num_workers]:>17.1f}"
        )
    print(f"({args.images} timed images per run, best of {args.repeats}; workers=0 loads in this process)")
    if 1 in cpu_rate:
        verdict = "meets" if cpu_rate[1] >= TARGET_PER_WORKER else "is below"
        print(
            f"num_workers=1: {cpu_rate[1]:.0f} img/s per worker (CPU) {verdict} the {TARGET_PER_WORKER:.0f} img/s target"
        )


if __name__ == "__main__":
    main()
