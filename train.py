"""Train one fold of one model family.

    python train.py --config configs/NAME.yaml --fold K [--data-dir D] [--out-dir runs] [--devices N]
                    [--resume | --overwrite] [--pseudo CSV] [--set key.path=value ...]

Outputs go to OUT_DIR/NAME/foldK/: best.ckpt and last.ckpt (each with its resolved config),
config.yaml, logs/ (TensorBoard and CSV), summary.json and the out-of-fold export.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common_blocks.cli import add_set_option
from common_blocks.config import load_config
from common_blocks.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML config of the model family")
    parser.add_argument("--fold", required=True, type=int, help="validation fold (0-based)")
    parser.add_argument("--data-dir", type=Path, help="overrides data.data_dir")
    parser.add_argument("--out-dir", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--devices", type=int, default=1, help="processes/GPUs for DDP (default 1)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from OUT_DIR/NAME/foldK/last.ckpt")
    resume.add_argument("--overwrite", action="store_true", help="discard earlier checkpoints of this fold")
    parser.add_argument("--pseudo", type=Path, help="pseudo-label CSV mixed into training batches")
    add_set_option(parser, "trainer.max_epochs=5")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.pseudo is not None:
        overrides.append(f"pseudo.labels={args.pseudo}")
    cfg = load_config(args.config, overrides)
    from common_blocks.runner import train_fold  # heavy imports only once the config is valid

    summary = train_fold(cfg, args.fold, args.out_dir, args.devices, args.resume, args.overwrite)
    print(json.dumps({k: summary[k] for k in ("name", "fold", "score", "positive_dice", "best_checkpoint")}))


if __name__ == "__main__":
    main()
