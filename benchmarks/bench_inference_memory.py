"""Peak RSS of a whole inference run over 1,000 and 4,000 synthetic images, each in its own process (a
tiny untrained member at 32x200, no TTA, no gate): streaming keeps it flat (target: within 10%).

    .venv/bin/python -m benchmarks.bench_inference_memory [--rss-images 1000 4000] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.common import doc_parser
from benchmarks.inference_timing import (
    DEBUG_CONFIGS,
    add_common_arguments,
    end_to_end_rate,
    models,
    parse,
    predictor,
    synthetic_test_images,
)
from common_blocks.data.formats import list_images

RSS_TOLERANCE = 0.10


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
    print(f"\npeak RSS of whole runs (tiny untrained member at 32x200, no TTA, batch {args.batch_size})")
    for workers in args.workers:
        peaks = {}
        for n_images in args.rss_images:
            command = [
                sys.executable,
                "-m",
                "benchmarks.bench_inference_memory",
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


def main() -> None:
    parser = doc_parser(__doc__)
    add_common_arguments(parser)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="loader workers to time")
    parser.add_argument("--rss-images", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parse(parser)
    if args.rss_child:
        rss_child(args)
    else:
        compare_memory(args)


if __name__ == "__main__":
    main()
