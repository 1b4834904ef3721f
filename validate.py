"""Offline validation: score a submission against labels, a checkpoint on its validation fold, or an
ensemble on out-of-fold images (which also tunes its post-processing)."""

from __future__ import annotations

import argparse
import json

from common_blocks.cli import add_loader_options, add_set_option
from common_blocks.errors import cli_entry
from common_blocks.scoring import score_submission


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score", help="score a submission against labels (either format on either side)"
    )
    score.add_argument("--submission", required=True, help="submission CSV (current or 2019 format)")
    score.add_argument("--truth", required=True, help="label CSV (current or 2019 format)")
    score.add_argument(
        "--images", help="image folder: the set of images scored (needed for current-format truth)"
    )
    score.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    checkpoint = commands.add_parser(
        "checkpoint", help="score a trained checkpoint on its own validation fold"
    )
    checkpoint.add_argument("--checkpoint", required=True, help="best.ckpt or last.ckpt of a run")
    checkpoint.add_argument("--data-dir", help="overrides the data directory saved in the checkpoint")
    checkpoint.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    oof = commands.add_parser(
        "oof", help="ensemble local CV on out-of-fold images; writes tuned thresholds and a leaderboard row"
    )
    oof.add_argument("--config", required=True, help="ensemble YAML (configs/ensemble.yaml)")
    oof.add_argument(
        "--data-dir", help="overrides data_dir: holds train.csv, train_images/ and the folds file"
    )
    add_loader_options(oof)
    add_set_option(oof, "tta=[none]")
    oof.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    report = commands.add_parser("report", help="HTML report of an ensemble's out-of-fold results")
    report.add_argument("--config", required=True, help="ensemble YAML, after `validate.py oof` ran on it")
    report.add_argument("--out", required=True, help="output folder for index.html and its PNG files")
    report.add_argument(
        "--worst", type=int, default=8, help="worst-scored validation images to show (default 8)"
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "score":
        summary = score_submission(args.submission, args.truth, args.images)
    elif args.command == "checkpoint":
        from common_blocks.runner import evaluate_checkpoint  # torch and the models only when needed

        summary = evaluate_checkpoint(args.checkpoint, args.data_dir)
    elif args.command == "oof":
        from common_blocks.ensemble import load_ensemble_config
        from common_blocks.ensemble_oof import run_oof

        overrides = [*args.overrides, *([f"data_dir={args.data_dir}"] if args.data_dir else [])]
        summary = run_oof(load_ensemble_config(args.config, overrides), args.batch_size, args.workers)
    elif args.command == "report":
        from common_blocks.ensemble import load_ensemble_config
        from common_blocks.ensemble_report import ensemble_report

        print(f"report written to {ensemble_report(load_ensemble_config(args.config), args.out, args.worst)}")
        return
    print(json.dumps(summary.to_dict()) if args.json else summary.format())


if __name__ == "__main__":
    main()
