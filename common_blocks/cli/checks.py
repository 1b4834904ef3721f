"""Checks of the paths a command's options name, made before anything heavy loads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from common_blocks.errors import DataError
from common_blocks.files import check_apart

if TYPE_CHECKING:
    from common_blocks.inference.ensemble_config import EnsembleConfig


def existing_file(path: Path, option: str) -> None:
    if not path.is_file():
        problem = "is a folder, expected a file" if path.is_dir() else "file not found"
        raise DataError(f"{path}: {problem} ({option})")


def apart_from_ensemble(
    out: Path,
    what: str,
    cfg: EnsembleConfig,
    config: Path,
    *,
    exported: Path | None = None,
    folder: bool = True,
    reads: Iterable[tuple[str, Path]] = (),
) -> None:
    """``out`` (a ``folder`` the command writes into, or a file) is not, holds not and lies not inside
    what the command reads: the ensemble's inputs (``EnsembleConfig.inputs``), the export it reads
    and the files its own options name (``reads``: a description and a path each)."""
    holds, within = cfg.inputs(config, exported=exported, folder=folder)
    check_apart(out, what, holds=[*holds, *reads], within=within)
