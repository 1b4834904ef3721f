"""Shared bits of the benchmark scripts: where the real sample lives, and timing."""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from pathlib import Path

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "severstal-sample"


def doc_parser(doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's parser: ``--help`` shows its whole docstring, usage lines as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def best_time(function: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def require_real_sample(path: Path) -> Path:
    if not (path / "train.csv").is_file():
        raise SystemExit(f"real sample not found at {path}; pass --data-dir")
    return path
