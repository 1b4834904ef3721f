"""Command-line options shared by the entry points."""

from __future__ import annotations

import argparse


def add_loader_options(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--workers`` of the commands that predict a folder of images."""
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument(
        "--workers", type=int, help="image-decoding processes (default: 0 on the CPU, 2 with a GPU)"
    )


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set key.path=value`` (repeatable) into ``args.overrides``; values are read as YAML."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )
