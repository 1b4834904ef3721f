"""An ensemble's checkpoints, loaded for prediction: each from its slot and checked to be of it, and
all of them checked to fit together before a predictor is built from them.

A checkpoint of another fold or run in a slot is refused (``load_slot``): scored out of fold on
images it trained on, it would inflate the local CV silently. ``check_compatible`` refuses members
of mixed modes, a gate that cannot gate, binary members without one, and grey mixed with RGB input;
each error names the checkpoint files of each kind. ``predictor.build_predictor`` drives these.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common_blocks.errors import ConfigError, DataError
from common_blocks.inference.ensemble_config import EnsembleConfig, RunRef
from common_blocks.training.checkpoints import load_checkpoint
from common_blocks.training.modes import BINARY_MODE, CLASSIFICATION_MODE
from common_blocks.training.network import DefectNetwork


def checkpoints_of(cfg: EnsembleConfig, ref: RunRef, folds: list[int] | None) -> list[Path]:
    """The checkpoint files of ``ref``'s folds (only those in ``folds`` when given), in fold order."""
    return [ref.checkpoint_path(cfg.runs_dir, fold) for fold in ref.folds if folds is None or fold in folds]


def load_slot(
    path: Path, ref: RunRef, fold: int, device: str | torch.device = "cpu", channels_last: bool | None = None
) -> DefectNetwork:
    """The checkpoint in ``ref``'s slot for ``fold``, refused when it records another fold or run: a
    checkpoint scored out of fold on images it trained on would inflate the local CV silently."""
    module = load_checkpoint(path, device, channels_last=channels_last)
    if module.fold is not None and module.fold != fold:
        raise DataError(
            f"{path}: was trained as fold {module.fold} (its validation fold), not fold {fold} of its "
            f"slot; out-of-fold scores would use images it trained on. Put it in fold{module.fold}/"
        )
    if module.cfg.name != ref.name:
        raise DataError(f"{path}: is a checkpoint of {module.cfg.name}, not of {ref.name} (its slot)")
    return module


def load_runs(
    cfg: EnsembleConfig, ref: RunRef, folds: list[int] | None, device: torch.device
) -> list[DefectNetwork]:
    """``ref``'s checkpoints of ``folds`` (all its folds when None), each loaded by ``load_slot``."""
    return [
        load_slot(ref.checkpoint_path(cfg.runs_dir, fold), ref, fold, device, channels_last=True)
        for fold in ref.folds
        if folds is None or fold in folds
    ]


def _by_kind(loaded: dict[Path, DefectNetwork], kind) -> str:
    """``kind: file, file; kind: file`` of the loaded checkpoints, grouped by ``kind(module)``."""
    groups: dict[str, list[str]] = {}
    for path, module in loaded.items():
        groups.setdefault(str(kind(module)), []).append(str(path))
    return "; ".join(f"{name}: {', '.join(paths)}" for name, paths in groups.items())


def check_compatible(
    cfg: EnsembleConfig,
    members: list[list[DefectNetwork]],
    gates: list[DefectNetwork],
    folds: list[int] | None = None,
) -> None:
    """Members of one segmentation mode, a classifier gate, and one kind of input for all; an error
    names the checkpoint files of each kind."""
    member_files = {
        path: module
        for ref, loaded in zip(cfg.members, members, strict=True)
        for path, module in zip(checkpoints_of(cfg, ref, folds), loaded, strict=True)
    }
    gate_files = dict(zip(checkpoints_of(cfg, cfg.gate, folds) if cfg.gate else [], gates, strict=True))
    modes: dict[str, list[str]] = {}
    for ref, loaded in zip(cfg.members, members, strict=True):
        for mode in dict.fromkeys(module.task_mode for module in loaded):
            modes.setdefault(ref.name, []).append(mode)
    if any(CLASSIFICATION_MODE in found for found in modes.values()):
        classifiers = [name for name, found in modes.items() if CLASSIFICATION_MODE in found]
        files = [str(p) for p, m in member_files.items() if m.task_mode == CLASSIFICATION_MODE]
        raise ConfigError(
            f"members: {', '.join(classifiers)} is a classifier; list it as the gate ({', '.join(files)})"
        )
    if len({mode for found in modes.values() for mode in found}) > 1:
        listed = ", ".join(f"{name}={'/'.join(found)}" for name, found in modes.items())
        raise ConfigError(
            f"members: trained in different modes ({listed}); ensemble members of one mode only "
            f"({_by_kind(member_files, lambda module: module.task_mode)})"
        )
    segmenting_gates = [path for path, gate in gate_files.items() if not gate.can_gate]
    if segmenting_gates:
        raise ConfigError(
            f"gate: {cfg.gate.name} is a {gate_files[segmenting_gates[0]].task_mode} segmenter without a "
            f"class head (class_head), not a classifier ({', '.join(map(str, segmenting_gates))})"
        )
    if BINARY_MODE in {mode for found in modes.values() for mode in found} and not cfg.gate:
        raise ConfigError("members: binary-mode members find defects but not their class; add a gate")
    loaded_files = {**member_files, **gate_files}
    if len({module.cfg.data.grayscale for module in loaded_files.values()}) > 1:
        listed = _by_kind(loaded_files, lambda module: "grey" if module.cfg.data.grayscale else "RGB")
        raise ConfigError(
            f"members and gate mix grey and RGB input (data.grayscale); use one kind ({listed})"
        )
