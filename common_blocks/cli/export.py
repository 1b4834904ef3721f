"""``severstal export``: every network of an ensemble as ONNX, checked against PyTorch."""

from __future__ import annotations

import argparse

from common_blocks.cli.options import ENSEMBLE_YAML, add_config_options, config_options, output_path


def export_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(
        parser, ENSEMBLE_YAML, "its images check the export (test_images/, else train_images/)", "tta=[none]"
    )
    parser.add_argument(
        "--out", required=True, type=output_path, help="folder for the .onnx files and manifest.json"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def export_command(args: argparse.Namespace) -> None:
    from common_blocks.deploy.export import check_export_folder, export_ensemble

    check_export_folder(args.out, args.overwrite)
    cfg = config_options(args).ensemble()
    from common_blocks.deploy.onnx_runtimes import installed_runtimes

    runtimes = installed_runtimes()  # the export is checked under every one installed
    manifest = export_ensemble(cfg, args.out, runtimes, config_path=args.config, overwrite=args.overwrite)
    print(manifest["postprocess_source"])
    for network in manifest["networks"]:
        differences = ", ".join(
            f"{name} {value:.1e}" for name, value in network["largest_difference"].items()
        )
        print(
            f"  {network['file']}: {network['role']} {network['run']} fold {network['fold']} ({differences})"
        )
    print(
        f"wrote {args.out}: {len(manifest['networks'])} network(s) and manifest.json; probabilities within "
        f"{manifest['check']['tolerance']:g} of PyTorch on {len(manifest['check']['images'])} image(s)"
    )
