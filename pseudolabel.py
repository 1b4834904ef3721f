"""Pseudo-label the test images with a trained ensemble: one round.

    python pseudolabel.py --config ENSEMBLE.yaml --round R [--data-dir D] [--out-dir pseudo]
                          [--p-high 0.95] [--p-low 0.05] [--batch-size 8] [--num-workers 2]
                          [--set key.path=value ...]

Keeps a test image when the classifier gate is confident about every class (> p_high or < p_low) and
the post-processed masks agree with it; writes OUT_DIR/round<R>.csv (train.csv header, four rows per
kept image) and OUT_DIR/round<R>_summary.json, and prints the summary. Train on it with
``train.py --pseudo OUT_DIR/round<R>.csv``; scripts/pseudo_rounds.sh runs the whole loop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common_blocks.cli import add_set_option
from common_blocks.ensemble import load_ensemble_config
from common_blocks.errors import cli_entry
from common_blocks.pseudo import SelectionSummary
from common_blocks.pseudo_round import pseudo_label_round


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="ensemble config (YAML)")
    parser.add_argument(
        "--round", required=True, type=int, dest="round_number", metavar="R", help="round number (1, 2, ...)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="overrides data_dir; the test images are DATA_DIR/test_images"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path("pseudo"), help="where round<R>.csv goes (default: pseudo)"
    )
    parser.add_argument(
        "--p-high", type=float, default=0.95, help="gate probability above which a class is sure"
    )
    parser.add_argument(
        "--p-low", type=float, default=0.05, help="gate probability below which it is surely absent"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="test images per forward pass (default 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="image-loading processes (default 2)")
    add_set_option(parser, "runs_dir=runs/exp2")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.round_number < 1 or args.batch_size < 1 or args.num_workers < 0:
        parser.error("--round and --batch-size must be 1 or more, --num-workers 0 or more")
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={args.data_dir}")
    cfg = load_ensemble_config(args.config, overrides)
    summary = SelectionSummary(args.p_high, args.p_low)
    report, _ = pseudo_label_round(
        cfg, args.round_number, args.out_dir, summary, args.batch_size, args.num_workers
    )
    print(summary.format())
    print(f"wrote {report['labels']}")
    for error in report["unreadable_images"]:
        print(f"warning: left out, unreadable: {error}", file=sys.stderr)
    if summary.kept == 0:
        print(
            f"warning: round {args.round_number} kept no test image; training with {report['labels']} "
            "uses the real images only (lower --p-high / raise --p-low, or improve the ensemble)",
            file=sys.stderr,
        )
    return report


if __name__ == "__main__":
    main()
