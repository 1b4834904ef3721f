"""The data commands: ``severstal folds``, ``synthetic`` and ``dataset``. None loads torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from common_blocks.arguments import NON_NEGATIVE, POSITIVE, integer_at_least
from common_blocks.cli.options import fraction_below_one, output_path
from common_blocks.files import check_apart, check_output_dir, check_output_file


def folds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="folder with train.csv and train_images/"
    )
    parser.add_argument(
        "--n-folds", type=integer_at_least(2), default=10, help="number of folds (default 10)"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--test-fraction",
        type=fraction_below_one,
        default=0.0,
        metavar="F",
        help="share of the images set aside as the local test split, fold `test` (default 0: none)",
    )
    parser.add_argument("--out", type=output_path, help="output CSV (default DATA_DIR/folds.csv)")


def folds_command(args: argparse.Namespace) -> None:
    from common_blocks.data.folds import TEST_FOLD, write_folds
    from common_blocks.data.formats import read_labels

    out = args.out or args.data_dir / "folds.csv"
    # The labels first: reading them is cheap, and a missing DATA_DIR is better told as such than
    # as an unwritable default --out inside it.
    table = read_labels(args.data_dir / "train.csv", args.data_dir / "train_images")
    check_output_file(out, "the folds CSV (--out)")
    check_apart(
        out,
        "the folds CSV (--out)",
        holds=[("the labels", args.data_dir / "train.csv")],
        within=[("the image folder", args.data_dir / "train_images")],
    )
    folds = write_folds(table, args.n_folds, args.seed, out, args.test_fraction)
    held_out = int((folds["fold"] == TEST_FOLD).sum())
    sizes = folds.loc[folds["fold"] != TEST_FOLD, "fold"].value_counts()
    test = f", {held_out} in the local test split" if held_out else ""
    print(
        f"wrote {out}: {len(table) - held_out} images in {args.n_folds} folds of "
        f"{sizes.min()}-{sizes.max()} images{test}"
    )


def synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_path, required=True, help="folder to write the data set into")
    parser.add_argument(
        "--n-train", type=NON_NEGATIVE, default=200, help="number of train images (default 200)"
    )
    parser.add_argument("--n-test", type=NON_NEGATIVE, default=50, help="number of test images (default 50)")
    parser.add_argument(
        "--n-weak",
        type=NON_NEGATIVE,
        default=0,
        help="number of weakly labelled images, written to weak_images/ with weak_labels.csv "
        "(which classes each holds, no masks) (default 0: none)",
    )
    parser.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=POSITIVE, default=2, help="worker threads (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")


def synthetic_command(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "the data set folder (--out)")
    from common_blocks.data.synthetic import generate

    generate(
        args.out,
        args.n_train,
        args.n_test,
        args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        n_weak=args.n_weak,
    )
    weak = f", and {args.n_weak} weakly labelled ones" if args.n_weak else ""
    print(f"wrote {args.n_train} train and {args.n_test} test images{weak} to {args.out}")


def dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="folder with train.csv and train_images/"
    )
    parser.add_argument(
        "--out", type=output_path, required=True, help="folder to write the PNGs and index.html into"
    )
    parser.add_argument("--per-class", type=POSITIVE, default=4, help="sample images per class (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sample (default 0)")


def dataset_command(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "the overview folder (--out)")
    check_apart(
        args.out, "the overview (--out)", holds=[], within=[("the data folder (--data-dir)", args.data_dir)]
    )
    from common_blocks.reports.dataset_overview import dataset_overview

    print(f"wrote {dataset_overview(args.data_dir, args.out, args.per_class, args.seed)}")
