"""The command line's argparse value types and the options several commands share, each group
bound to a small dataclass built from the parsed arguments by one function: ``ConfigOptions``
(``--config``, ``--data-dir``, ``--set``) and ``PredictOptions`` (``--batch-size``, ``--workers``,
``--backend``, ``--precision``, ``--exported``). Nothing here imports torch at import time."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common_blocks.arguments import NON_NEGATIVE, POSITIVE
from common_blocks.backend_names import BACKENDS, PRECISIONS
from common_blocks.inference.options import PredictOptions

if TYPE_CHECKING:
    from common_blocks.inference.ensemble_config import EnsembleConfig

ENSEMBLE_YAML = "ensemble YAML (configs/ensemble.yaml)"


# --- value types ------------------------------------------------------------------------------------


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def fraction_below_one(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    value = probability(text)
    if value == 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {value}")
    return value


def output_path(text: str) -> Path:
    """An argparse type: a path to write to; empty is a mistake (``Path("")`` would be the working
    directory)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def key_value(text: str) -> tuple[str, str]:
    """An argparse type: ``KEY=VALUE`` with a non-empty key and value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def non_empty(text: str) -> str:
    """An argparse type: a name that is not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a name, got an empty string")
    return text


# --- config: --config, --data-dir, --set ------------------------------------------------------------


def add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set key.path=value``, repeatable, into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{help_text} (repeatable; values are YAML)",
    )


def add_config_options(
    parser: argparse.ArgumentParser, what: str, data_dir: str, example: str, default: Path | None = None
) -> None:
    """``--config``, ``--data-dir`` and ``--set`` of every command that reads a config; ``default``:
    the config taken without ``--config`` (``take_default_config`` says which)."""
    if default is None:
        parser.add_argument("--config", required=True, type=Path, help=what)
    else:
        parser.add_argument("--config", type=Path, help=f"{what} (default {default})")
        parser.set_defaults(default_config=default)
    parser.add_argument("--data-dir", type=Path, help=f"overrides the config's data directory: {data_dir}")
    add_set_option(parser, f"override a config key, e.g. --set {example}")


def take_default_config(args: argparse.Namespace) -> None:
    """``--config`` left out of a command that has a default: the default, said on stderr, so which
    config ran is never a guess."""
    if getattr(args, "config", Path()) is None:
        args.config = args.default_config
        print(f"config: {args.config} (the default; --config chooses another)", file=sys.stderr)


def with_data_dir(overrides: list[str], data_dir: Path | None, key: str) -> list[str]:
    """The ``--set`` overrides, plus ``--data-dir`` as the override of ``key``."""
    return [*overrides, *([f"{key}={data_dir}"] if data_dir is not None else [])]


@dataclass(frozen=True)
class ConfigOptions:
    """``--config``, ``--data-dir`` and ``--set`` (``add_config_options``)."""

    config: Path
    data_dir: Path | None
    overrides: tuple[str, ...]

    def with_data_dir(self, key: str) -> list[str]:
        """The overrides, ``--data-dir`` as the override of ``key``."""
        return with_data_dir(list(self.overrides), self.data_dir, key)

    def ensemble(self) -> EnsembleConfig:
        """The ensemble config, ``--data-dir`` as its ``data_dir``."""
        from common_blocks.inference.ensemble_config import load_ensemble_config

        return load_ensemble_config(self.config, self.with_data_dir("data_dir"))


def config_options(args: argparse.Namespace) -> ConfigOptions:
    return ConfigOptions(args.config, args.data_dir, tuple(args.overrides))


# --- predicting: --batch-size, --workers, --backend, --precision, --exported ------------------------


def add_predict_options(parser: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--workers``, ``--backend``, ``--precision`` and ``--exported`` of the
    commands that predict a folder of images (``PredictOptions``)."""
    parser.add_argument("--batch-size", type=POSITIVE, default=4, help="images per batch (default 4)")
    parser.add_argument(
        "--workers",
        type=NON_NEGATIVE,
        help="image-decoding processes (default: 0 on the CPU, where a worker takes a core from the "
        "model; 2 with a GPU)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="what runs the networks: torch (the checkpoints; default), openvino or onnxruntime (their ONNX "
        "export, on the CPU; optional extras), auto (torch on CUDA, else the fastest installed)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="the networks' arithmetic: fp32 (default), bf16 (CUDA, or a CPU with avx512_bf16/amx_bf16), "
        "fp16 (CUDA)",
    )
    parser.add_argument(
        "--exported",
        type=Path,
        metavar="DIR",
        help="with openvino/onnxruntime: the networks `severstal export` wrote (default: exported now "
        "into a temporary folder)",
    )


def predict_options(args: argparse.Namespace) -> PredictOptions:
    """The predicting options as given (``--backend auto`` unresolved: the sweep's jobs resolve it
    where they run)."""
    return PredictOptions(args.batch_size, args.workers, args.backend, args.precision, args.exported)


def chosen_predict_options(args: argparse.Namespace) -> PredictOptions:
    """The predicting options with ``--backend`` resolved, once the backend is known to run
    ``--precision`` here (``choose_backend``): checked before anything loads."""
    from common_blocks.deploy.backend_choice import choose_backend

    options = predict_options(args)
    return dataclasses.replace(
        options, backend=choose_backend(options.backend, options.precision, options.exported)
    )


def chosen_runtime(options: PredictOptions, cfg: EnsembleConfig) -> contextlib.AbstractContextManager:
    """The context holding the chosen backend's ``Runtime`` (None for torch), for ``build_predictor``."""
    from common_blocks.deploy.backend_choice import backend_runtime

    return backend_runtime(options.backend, cfg, options.exported)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
