"""``severstal pseudo``: one pseudo-label round over the test images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common_blocks.arguments import POSITIVE
from common_blocks.cli.checks import apart_from_ensemble
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
    add_predict_options(parser)


def pseudo_command(args: argparse.Namespace) -> None:
    from common_blocks.pseudo.selection import SelectionSummary

    summary = SelectionSummary(args.p_high, args.p_low)  # checks the thresholds before anything loads
    check_output_dir(args.out_dir, "the pseudo-label folder (--out-dir)")
    options = chosen_predict_options(args)
    cfg = config_options(args).ensemble()
    apart_from_ensemble(
        args.out_dir, "the pseudo-labels (--out-dir)", cfg, args.config, exported=options.exported
    )
    from common_blocks.pseudo.rounds import round_path

    for suffix in (".csv", "_summary.json"):
        check_output_file(round_path(args.out_dir, args.round_number, suffix), "a pseudo-label round file")
    cfg.resolved_postprocess()  # a thresholds file that cannot be read fails before any model loads
    from common_blocks.pseudo.rounds import pseudo_label_round

    with chosen_runtime(options, cfg) as runtime:
        report, _ = pseudo_label_round(
            cfg, args.round_number, args.out_dir, summary, options, runtime=runtime
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
