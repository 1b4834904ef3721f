"""``severstal score`` (a submission against labels) and ``severstal checkpoint`` (a trained
checkpoint on its own validation fold)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common_blocks.cli.options import add_json_option, add_set_option, with_data_dir
from common_blocks.strict_json import print_json


def score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", required=True, type=Path, help="submission CSV (current or 2019)")
    parser.add_argument("--truth", required=True, type=Path, help="label CSV (current or 2019 format)")
    parser.add_argument(
        "--images", type=Path, help="image folder: the set of images scored (needed for current-format truth)"
    )
    parser.add_argument(
        "--folds",
        type=Path,
        metavar="CSV",
        help="score only the images of this folds file's local test split (fold `test`)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CSV",
        help="a baseline submission: print the difference and its 90%% paired-bootstrap interval",
    )
    add_json_option(parser)


def score_command(args: argparse.Namespace) -> None:
    from common_blocks.evaluation.scorer import compare_submissions, score_submission

    if args.against is None:
        summary = score_submission(args.submission, args.truth, args.images, args.folds)
        if args.json:
            print_json(summary.to_dict())
        else:
            print(summary.format())
        return
    summary, difference = compare_submissions(
        args.submission, args.against, args.truth, args.images, args.folds
    )
    if args.json:
        print_json({**summary.to_dict(), "against": difference.to_dict()})
    else:
        print(f"{summary.format()}\n{difference.format()}")


def checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="best.ckpt or last.ckpt of a run")
    parser.add_argument("--data-dir", type=Path, help="overrides the data directory saved in the checkpoint")
    add_set_option(
        parser, "override a key of the saved config for this evaluation, e.g. --set data.valid_batch_size=2"
    )
    add_json_option(parser)


def checkpoint_command(args: argparse.Namespace) -> None:
    from common_blocks.training.runner import evaluate_checkpoint

    summary = evaluate_checkpoint(
        args.checkpoint, with_data_dir(args.overrides, args.data_dir, "data.data_dir")
    )
    if args.json:
        print_json(summary.to_dict())
    else:
        print(summary.format())
