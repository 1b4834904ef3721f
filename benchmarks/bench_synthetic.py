"""Synthetic data generator speed, JPEG writing and label files included (target: 20 images/s or more).

python -m benchmarks.bench_synthetic [--n 200] [--workers 2]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import doc_parser
from common_blocks.data.synthetic import generate


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="worker threads (default 2)")
    args = parser.parse_args()
    n_test = args.n // 5
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        generate(Path(out_dir), args.n - n_test, n_test, seed=0, workers=args.workers)
        elapsed = time.perf_counter() - start
    print(f"{args.n} images, {args.workers} worker(s): {elapsed:.2f} s, {args.n / elapsed:.1f} images/s")


if __name__ == "__main__":
    main()
