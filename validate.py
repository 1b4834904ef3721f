"""Offline validation: score a submission against labels, or a checkpoint on its validation fold."""

from __future__ import annotations

import argparse
import json

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
    checkpoint = commands.add_parser("checkpoint", help="score a trained checkpoint on its own validation fold")
    checkpoint.add_argument("--checkpoint", required=True, help="best.ckpt or last.ckpt of a run")
    checkpoint.add_argument("--data-dir", help="overrides the data directory saved in the checkpoint")
    checkpoint.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "score":
        summary = score_submission(args.submission, args.truth, args.images)
    elif args.command == "checkpoint":
        from common_blocks.runner import evaluate_checkpoint  # torch and the models only when needed

        summary = evaluate_checkpoint(args.checkpoint, args.data_dir)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())


if __name__ == "__main__":
    main()
