"""``severstal bundle``: one folder to upload as a Kaggle dataset (checkpoints, config, thresholds,
wheels, the notebook's lines)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common_blocks.cli.options import ENSEMBLE_YAML, add_config_options, output_path
from common_blocks.errors import DataError


def bundle_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(
        parser,
        f"{ENSEMBLE_YAML} whose checkpoints and tuned thresholds go into the bundle",
        "written into the bundled config: where the notebook finds test_images/ "
        "(default /kaggle/input/severstal-steel-defect-detection)",
        "runs_dir=runs/exp2",
    )
    parser.add_argument(
        "--out", required=True, type=output_path, help="the bundle folder, to upload as a Kaggle dataset"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    parser.add_argument(
        "--kaggle-dataset",
        metavar="NAME",
        help="the dataset's slug on Kaggle (the end of its URL): the notebook reads /kaggle/input/NAME "
        "(default: --out's folder name)",
    )
    wheels = parser.add_mutually_exclusive_group()
    wheels.add_argument(
        "--wheels-from",
        type=Path,
        metavar="DIR",
        help="copy the dependency wheels from this folder instead of downloading them from PyPI",
    )
    wheels.add_argument(
        "--no-dependency-wheels",
        action="store_true",
        help="bundle only the project's wheel: the notebook's image has every dependency",
    )


def bundle_command(args: argparse.Namespace) -> None:
    from common_blocks.deploy.bundle import DEPENDENCY_WHEELS, check_bundle_folder, dataset_name

    check_bundle_folder(args.out, args.overwrite)
    dataset_name(args.out, args.kaggle_dataset)
    if args.wheels_from is not None and not args.wheels_from.is_dir():
        raise DataError(f"{args.wheels_from}: no such folder (--wheels-from)")
    from common_blocks.inference.ensemble_config import load_ensemble_config

    cfg = load_ensemble_config(args.config, args.overrides)
    from common_blocks.deploy.bundle import build_bundle

    bundle = build_bundle(
        cfg,
        args.out,
        config_path=args.config,
        dataset=args.kaggle_dataset,
        data_dir=None if args.data_dir is None else str(args.data_dir),
        dependencies=() if args.no_dependency_wheels else DEPENDENCY_WHEELS,
        wheels_from=args.wheels_from,
        overwrite=args.overwrite,
    )
    for warning in bundle.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(bundle.format())
