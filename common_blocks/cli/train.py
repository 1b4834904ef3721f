"""``severstal train``: one fold of one model family."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common_blocks.arguments import NON_NEGATIVE, POSITIVE
from common_blocks.cli.options import add_config_options, config_options, output_path
from common_blocks.errors import PipelineError
from common_blocks.files import check_apart, check_output_dir
from common_blocks.strict_json import print_json


def train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(
        parser,
        "YAML config of the model family",
        "train.csv, train_images/",
        "trainer.max_epochs=5",
        default=Path("configs/fpn_se_resnext50.yaml"),  # the main model family
    )
    parser.add_argument("--fold", required=True, type=NON_NEGATIVE, help="validation fold (0-based)")
    parser.add_argument("--out-dir", type=output_path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--devices", type=POSITIVE, default=1, help="processes/GPUs for DDP (default 1)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from OUT_DIR/NAME/foldK/last.ckpt")
    resume.add_argument("--overwrite", action="store_true", help="discard earlier checkpoints of this fold")
    parser.add_argument("--pseudo", type=Path, help="pseudo-label CSV mixed into training batches")
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start from this checkpoint's weights (an earlier stage; same model), fresh optimiser and schedule",
    )


def train_command(args: argparse.Namespace) -> None:
    check_output_dir(args.out_dir, "the runs folder (--out-dir)")
    from common_blocks.training.config import load_config

    overrides = config_options(args).with_data_dir("data.data_dir")
    if args.pseudo is not None:
        overrides.append(f"pseudo.labels={args.pseudo}")
    if args.init_from is not None:
        if args.init_from.suffix != ".ckpt" or not args.init_from.is_file():
            raise PipelineError(f"--init-from {args.init_from}: expected an existing .ckpt file")
        overrides.append(f"init_from={json.dumps(str(args.init_from))}")
    cfg = load_config(args.config, overrides)
    from common_blocks.run_folder import RunPaths

    check_output_dir(RunPaths.of(args.out_dir, cfg.name, args.fold).root, "the run folder")
    check_apart(args.out_dir, "the runs (--out-dir)", holds=[], within=[("the data_dir", cfg.data.data_dir)])
    from common_blocks.training.runner import train_fold  # the model stack only once the config is valid

    summary = train_fold(cfg, args.fold, args.out_dir, args.devices, args.resume, args.overwrite)
    print_json({k: summary[k] for k in ("name", "fold", "score", "positive_dice", "best_checkpoint")})
