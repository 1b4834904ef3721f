"""RLE codec speed: the numba codec against the usual numpy implementation, on the real masks.

python -m benchmarks.bench_rle [--data-dir ../shared/severstal-sample]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import REAL_SAMPLE, best_time, doc_parser, require_real_sample
from common_blocks.data import rle


def numpy_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def numpy_decode(encoded: str, shape: tuple[int, int] = (256, 1600)) -> np.ndarray:
    values = encoded.split()
    starts = np.asarray(values[0::2], dtype=int) - 1
    lengths = np.asarray(values[1::2], dtype=int)
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for start, length in zip(starts, lengths):
        flat[start : start + length] = 1
    return flat.reshape(shape[1], shape[0]).T


def consume(function, inputs: list) -> None:
    for item in inputs:
        function(item)


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument("--data-dir", type=Path, default=REAL_SAMPLE)
    args = parser.parse_args()
    strings = pd.read_csv(require_real_sample(args.data_dir) / "train.csv")["EncodedPixels"].tolist()
    masks = [rle.decode(s) for s in strings]  # also compiles/loads the numba cache
    assert all(rle.encode(m) == s == numpy_encode(m) for m, s in zip(masks, strings))
    assert all(np.array_equal(numpy_decode(s), m) for m, s in zip(masks, strings))
    rows = []
    for direction, inputs, ours, theirs in [
        ("encode", masks, rle.encode, numpy_encode),
        ("decode", strings, rle.decode, numpy_decode),
    ]:
        # each result is dropped before the next call, as in a data loader
        numba_s = best_time(lambda f=ours, x=inputs: consume(f, x))
        numpy_s = best_time(lambda f=theirs, x=inputs: consume(f, x))
        rows.append((direction, numba_s, numpy_s))
    print(f"{len(strings)} real masks (256x1600)")
    print(f"{'':8}{'numba ms/mask':>15}{'numpy ms/mask':>15}{'speed-up':>10}")
    for direction, numba_s, numpy_s in rows:
        n = len(strings)
        print(f"{direction:8}{1e3 * numba_s / n:15.3f}{1e3 * numpy_s / n:15.3f}{numpy_s / numba_s:9.1f}x")


if __name__ == "__main__":
    main()
