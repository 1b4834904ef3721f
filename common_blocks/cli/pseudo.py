"""``severstal pseudo``: one pseudo-label round over the test images, or any folder of images (with
their image-level labels: class-aware pseudo-labels)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common_blocks.arguments import POSITIVE
from common_blocks.cli.checks import apart_from_ensemble, existing_file
from common_blocks.cli.options import (
    ENSEMBLE_YAML,
    add_config_options,
    add_predict_options,
    chosen_predict_options,
    chosen_runtime,
    config_options,
    output_path,
    probability,
)
from common_blocks.errors import ConfigError, DataError
from common_blocks.files import check_output_dir, check_output_file


def pseudo_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, ENSEMBLE_YAML, "test_images/", "runs_dir=runs/exp2")
    parser.add_argument(
        "--round",
        required=True,
        type=POSITIVE,
        dest="round_number",
        metavar="R",
        help="round number (1, 2, ...)",
    )
    parser.add_argument(
        "--out-dir",
        type=output_path,
        default=Path("pseudo"),
        help="where round<R>.csv goes (default: pseudo)",
    )
    parser.add_argument(
        "--p-high",
        type=probability,
        default=0.95,
        help="gate probability above which a class is sure (0.95)",
    )
    parser.add_argument(
        "--p-low", type=probability, default=0.05, help="gate probability below which it is absent (0.05)"
    )
    parser.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="the folder of images to label (default: DATA_DIR/test_images), e.g. DATA_DIR/weak_images",
    )
    parser.add_argument(
        "--image-labels",
        type=Path,
        metavar="CSV",
        help="which classes each image of --images holds (ImageId,ClassId, as weak_labels.csv): class-aware "
        "pseudo-labels (a class an image does not hold is an empty mask, one it holds the ensemble's mask "
        "where the gate is above --p-high and the mask is not empty)",
    )
    parser.add_argument(
        "--unsure",
        choices=("ignore", "drop"),  # selection.Unsure
        help="with --image-labels, a class an image holds that the ensemble is unsure of: 'ignore' (default) "
        "leaves that class out of the loss for that image (the rest of the image is trained on), 'drop' "
        "leaves the image out",
    )
    add_predict_options(parser)


def pseudo_command(args: argparse.Namespace) -> None:
    from common_blocks.pseudo.selection import SelectionSummary

    if args.unsure is not None and args.image_labels is None:
        raise ConfigError("--unsure: only with --image-labels (it says what an unsure labelled class does)")
    on_unsure = None if args.image_labels is None else args.unsure or "ignore"
    # checks the thresholds before anything loads
    summary = SelectionSummary(args.p_high, args.p_low, on_unsure=on_unsure)
    check_output_dir(args.out_dir, "the pseudo-label folder (--out-dir)")
    options = chosen_predict_options(args)
    cfg = config_options(args).ensemble()
    images = Path(cfg.data_dir) / "test_images" if args.images is None else args.images
    if args.images is not None and not args.images.is_dir():
        raise DataError(f"{args.images}: image folder not found (--images)")
    image_labels = None
    if args.image_labels is not None:
        from common_blocks.data.formats import read_weak_labels

        existing_file(args.image_labels, "--image-labels")
        image_labels = read_weak_labels(args.image_labels, images)
    reads = [("the images (--images)", images)]
    if args.image_labels is not None:
        reads.append(("the image labels (--image-labels)", args.image_labels))
    apart_from_ensemble(
        args.out_dir,
        "the pseudo-labels (--out-dir)",
        cfg,
        args.config,
        exported=options.exported,
        reads=reads,
    )
    from common_blocks.pseudo.rounds import round_path

    for suffix in (".csv", "_summary.json"):
        check_output_file(round_path(args.out_dir, args.round_number, suffix), "a pseudo-label round file")
    cfg.resolved_postprocess()  # a thresholds file that cannot be read fails before any model loads
    from common_blocks.pseudo.rounds import pseudo_label_round

    with chosen_runtime(options, cfg) as runtime:
        report, _ = pseudo_label_round(
            cfg,
            args.round_number,
            args.out_dir,
            summary,
            options,
            runtime=runtime,
            images_dir=images,
            image_labels=image_labels,
        )
    print(summary.format())
    print(f"wrote {report['labels']}")
    if args.images is not None:
        print(f"train on it with --pseudo {report['labels']} --set pseudo.images={images.resolve()}")
    for error in report["unreadable_images"]:
        print(f"warning: left out, unreadable: {error}", file=sys.stderr)
    if summary.kept == 0:
        print(
            f"warning: round {args.round_number} kept no image; training with {report['labels']} "
            "uses the real images only (lower --p-high / raise --p-low, or improve the ensemble)",
            file=sys.stderr,
        )
