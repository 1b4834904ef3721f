"""``severstal infer``: an ensemble's submission of the test images, or its prediction of one image."""

from __future__ import annotations

import argparse
from pathlib import Path

from common_blocks.cli.checks import apart_from_ensemble, existing_file
from common_blocks.cli.options import (
    ENSEMBLE_YAML,
    add_config_options,
    add_predict_options,
    chosen_predict_options,
    chosen_runtime,
    config_options,
    output_path,
)
from common_blocks.errors import ConfigError
from common_blocks.files import check_output_file


def infer_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(
        parser,
        ENSEMBLE_YAML,
        "test_images/, sample_submission.csv",
        "tta=[none]",
        default=Path("configs/ensemble.yaml"),
    )
    parser.add_argument(
        "--out", type=output_path, default=Path("submission.csv"), help="default submission.csv"
    )
    parser.add_argument("--format", choices=("current", "2019"), default="current", help="submission format")
    add_predict_options(parser)
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="predict no defect for unreadable images, list them"
    )
    parser.add_argument(
        "--local-test",
        type=Path,
        metavar="FOLDS_CSV",
        help="predict the local test split of this folds file (fold `test`, from DATA_DIR/train_images) "
        "instead of the test images; score it with `severstal score --folds`",
    )
    parser.add_argument("--image", type=Path, help="predict this one image instead and print its classes")
    parser.add_argument("--overlay", type=output_path, help="with --image: write a PNG with the masks drawn")
    parser.add_argument("--truth", type=Path, help="with --image: label CSV whose masks are drawn in red")


def infer_command(args: argparse.Namespace) -> None:
    if args.image is None and (args.overlay or args.truth):
        raise ConfigError("--overlay and --truth need --image")
    if args.image is not None and args.local_test is not None:
        raise ConfigError("--image and --local-test each choose what is predicted; give one")
    if args.image is not None:  # the inputs and the output are checked before any model loads
        existing_file(args.image, "--image")
        reads = [("the image (--image)", args.image)]
        if args.truth is not None:
            existing_file(args.truth, "--truth")
            reads.append(("the labels (--truth)", args.truth))
        out, what = args.overlay, "the overlay PNG (--overlay)"
    else:
        reads, out, what = [], args.out, "the submission (--out)"
        if args.local_test is not None:
            existing_file(args.local_test, "--local-test")
            reads.append(("the folds file (--local-test)", args.local_test))
    if out is not None:
        check_output_file(out, what)
    options = chosen_predict_options(args)
    cfg = config_options(args).ensemble()
    if out is not None:
        apart_from_ensemble(out, what, cfg, args.config, exported=options.exported, folder=False, reads=reads)
    from common_blocks.inference.predictor import build_predictor
    from common_blocks.inference.submission import make_submission, submission_image_ids

    # Bad data fails before any model loads.
    if args.image is not None:
        image_ids, images_dir = None, None
    elif args.local_test is not None:
        from common_blocks.data.folds import local_test_ids

        image_ids, images_dir = local_test_ids(args.local_test), cfg.data_dir / "train_images"
    else:
        image_ids, images_dir = submission_image_ids(cfg.data_dir), cfg.data_dir / "test_images"
    postprocess, source = cfg.resolved_postprocess()
    print(source)
    with chosen_runtime(options, cfg) as runtime:
        predictor = build_predictor(
            cfg, postprocess=postprocess, precision=options.precision, runtime=runtime
        )
        if args.image is not None:
            from common_blocks.reports.single_image import show_prediction

            print(show_prediction(predictor, args.image, args.overlay, args.truth))
            return
        report = make_submission(
            predictor,
            images_dir,
            image_ids,
            args.out,
            args.format,
            options,
            args.skip_bad_images,
        )
    print(report.format())
