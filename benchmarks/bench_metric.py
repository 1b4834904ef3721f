"""Scoring speed at the full competition scale: 12,568 images x 4 classes, end to end from CSV files.

    python -m benchmarks.bench_metric [--data-dir ../shared/severstal-sample] [--images 12568]

The truth reuses the real sample's masks over 12,568 image ids (about half of them defect-free, as
in the competition); the submission shifts, drops or invents masks so every kind of pair occurs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REAL_SAMPLE, doc_parser, peak_rss_mib, require_real_sample
from common_blocks.data import rle
from common_blocks.data.formats import RLE_COLUMNS, empty_table, read_labels, write_submission
from common_blocks.evaluation.scorer import score_submission


def build_tables(real_masks: list[str], n_images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"{i:09x}.jpg" for i in range(n_images)]
    truth, pred = empty_table(ids), empty_table(ids)
    has_defect = rng.random(n_images) > 0.47
    for column, rate in zip(RLE_COLUMNS, (0.14, 0.04, 0.8, 0.13)):
        chosen = has_defect & (rng.random(n_images) < rate)
        truth_rles = rng.choice(real_masks, size=int(chosen.sum()))
        truth.loc[chosen, column] = truth_rles
        predicted = []
        for encoded in truth_rles:
            kind = rng.random()
            if kind < 0.15:
                predicted.append("")
            elif kind < 0.6:
                predicted.append(rle.encode(np.roll(rle.decode(encoded), int(rng.integers(-20, 20)), axis=1)))
            else:
                predicted.append(encoded)
        pred.loc[chosen, column] = predicted
        false_positive = ~chosen & (rng.random(n_images) < 0.05)
        pred.loc[false_positive, column] = rng.choice(real_masks, size=int(false_positive.sum()))
    return truth, pred


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument("--data-dir", type=Path, default=REAL_SAMPLE)
    parser.add_argument("--images", type=int, default=12568)
    args = parser.parse_args()
    real = read_labels(require_real_sample(args.data_dir) / "train.csv")
    real_masks = [m for column in RLE_COLUMNS for m in real[column] if m]
    truth, pred = build_tables(real_masks, args.images)
    with tempfile.TemporaryDirectory() as folder:
        truth_path, sub_path = Path(folder) / "truth.csv", Path(folder) / "submission.csv"
        write_submission(truth, truth_path, "2019")
        write_submission(pred, sub_path, "current")
        start = time.perf_counter()
        summary = score_submission(sub_path, truth_path)
        elapsed = time.perf_counter() - start
    print(f"scored {summary.n_images} images x 4 classes from CSV files in {elapsed:.1f} s (target < 60 s)")
    print(f"peak RSS {peak_rss_mib():.0f} MiB; score {summary.score:.4f}")


if __name__ == "__main__":
    main()
