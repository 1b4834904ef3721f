"""Predict the test images with an ensemble and write a submission, or look at one image's prediction.

    python inference.py --config configs/ensemble.yaml [--data-dir D] [--out submission.csv]
                        [--format current|2019] [--batch-size B] [--workers W] [--skip-bad-images]
    python inference.py --config CFG --image path.jpg [--overlay out.png] [--truth labels.csv]

Test ids (and their order) come from DATA_DIR/sample_submission.csv, else from DATA_DIR/test_images.
The post-processing is the tuned one of ``validate.py oof`` when its thresholds file exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common_blocks.cli import add_loader_options, add_set_option
from common_blocks.errors import ConfigError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="ensemble YAML (configs/ensemble.yaml)")
    parser.add_argument("--data-dir", type=Path, help="overrides data_dir: holds test_images/")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="default submission.csv")
    parser.add_argument("--format", choices=("current", "2019"), default="current", help="submission format")
    add_loader_options(parser)
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="predict no defect for unreadable images, list them"
    )
    parser.add_argument("--image", type=Path, help="predict this one image instead and print its classes")
    parser.add_argument("--overlay", type=Path, help="with --image: write a PNG with the contours drawn")
    parser.add_argument("--truth", type=Path, help="with --image: label CSV whose masks are drawn in red")
    add_set_option(parser, "tta=[none]")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.image is None and (args.overlay or args.truth):
        raise ConfigError("--overlay and --truth need --image")
    from common_blocks.ensemble import load_ensemble_config  # heavy imports only once the arguments are valid
    from common_blocks.predict import build_predictor
    from common_blocks.submission import make_submission, submission_image_ids

    overrides = [*args.overrides, *([f"data_dir={args.data_dir}"] if args.data_dir else [])]
    cfg = load_ensemble_config(args.config, overrides)
    image_ids = None if args.image else submission_image_ids(cfg.data_dir)  # bad data fails before loading
    postprocess, source = cfg.resolved_postprocess()
    print(source)
    predictor = build_predictor(cfg, postprocess=postprocess)
    if args.image is not None:
        from common_blocks.overlay import show_prediction

        print(show_prediction(predictor, args.image, args.overlay, args.truth))
        return
    report = make_submission(
        predictor,
        cfg.data_dir / "test_images",
        image_ids,
        args.out,
        args.format,
        args.batch_size,
        args.workers,
        args.skip_bad_images,
    )
    print(report.format())


if __name__ == "__main__":
    main()
