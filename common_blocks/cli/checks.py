"""Checks of the paths a command's options name, made before anything heavy loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common_blocks.errors import ConfigError, DataError
from common_blocks.files import check_apart

if TYPE_CHECKING:
    from common_blocks.inference.ensemble_config import EnsembleConfig


def existing_file(path: Path, option: str) -> None:
    if not path.is_file():
        problem = "is a folder, expected a file" if path.is_dir() else "file not found"
        raise DataError(f"{path}: {problem} ({option})")


def not_an_input(out: Path, option: str, *inputs: Path) -> None:
    """An output must not replace a file the same command reads."""
    for source in inputs:
        if out.is_file() and source.is_file() and out.samefile(source):
            raise ConfigError(f"{out}: {option} is an input of this command ({source}); write elsewhere")


def apart_from_ensemble(out: Path, what: str, cfg: EnsembleConfig, config: Path, *reads: Path) -> None:
    """``out`` (a folder the command writes into) is not, and lies not inside, what it reads: the
    ensemble's data and runs, its configs, and ``reads`` (an export)."""
    holds, within = cfg.inputs(config)
    within += [("the export it reads (--exported)", path) for path in reads]
    check_apart(out, what, holds=holds, within=within)
