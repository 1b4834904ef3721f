"""``severstal oof`` (an ensemble's local CV on out-of-fold images, tuning its post-processing) and
``severstal report`` (the HTML page of those results)."""

from __future__ import annotations

import argparse

from common_blocks.arguments import POSITIVE
from common_blocks.cli.checks import apart_from_ensemble
from common_blocks.cli.options import (
    ENSEMBLE_YAML,
    add_config_options,
    add_json_option,
    add_predict_options,
    chosen_predict_options,
    chosen_runtime,
    config_options,
    output_path,
)
from common_blocks.files import check_output_dir
from common_blocks.strict_json import print_json


def oof_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, ENSEMBLE_YAML, "train.csv, train_images/, the folds file", "tta=[none]")
    add_predict_options(parser)
    add_json_option(parser)


def oof_command(args: argparse.Namespace) -> None:
    options = chosen_predict_options(args)
    cfg = config_options(args).ensemble()
    from common_blocks.inference.oof_search import check_outputs, run_oof

    check_outputs(cfg, args.config, options.exported)  # before the export it reads is opened
    with chosen_runtime(options, cfg) as runtime:
        report = run_oof(cfg, options, runtime)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.format())


def report_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(
        parser,
        f"{ENSEMBLE_YAML}, after `severstal oof` ran on it",
        "train.csv, train_images/",
        "runs_dir=runs/exp2",
    )
    parser.add_argument(
        "--out", required=True, type=output_path, help="output folder for index.html and its PNGs"
    )
    parser.add_argument(
        "--worst", type=POSITIVE, default=8, help="worst-scored validation images to show (default 8)"
    )


def report_command(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "the report folder (--out)")
    cfg = config_options(args).ensemble()
    apart_from_ensemble(args.out, "the report (--out)", cfg, args.config)
    from common_blocks.reports.oof_report import ensemble_report

    print(f"report written to {ensemble_report(cfg, args.out, args.worst)}")
