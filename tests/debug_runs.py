"""Untrained debug-size runs (written in a second, no training) and the debug ensemble over them: the
inference, export, bundle and report tests exercise plumbing, which does not depend on how good the
models are."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from common_blocks.inference.ensemble_config import EnsembleConfig, load_ensemble_config
from common_blocks.run_folder import RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.module import DefectModule
from tests.repository import DEBUG, DEBUG_GATE, ENSEMBLE
from tests.stand_ins import save_untrained


def write_untrained(
    runs: Path, config: Path, fold: int, *overrides: str, output_bias: tuple[float, ...] | None = None
) -> None:
    """An untrained checkpoint of ``config``; the models see 32x200 images, to keep the tests fast.
    With ``output_bias``, the output layer's weights are zero and its bias is that: every pixel's (or
    image's) logit for class k is ``output_bias[k]``, whatever the image and on any arithmetic."""
    cfg = load_config(config, ["data.scale=0.125", *overrides])
    torch.manual_seed(fold)
    module = DefectModule(cfg.model_dump(mode="json"), fold)
    if output_bias is not None:
        # the output layer: smp's segmentation head, a classifier's fc
        *_, weight, bias = module.parameters()
        with torch.no_grad():
            weight.zero_()
            bias.copy_(torch.tensor(output_bias))
    save_untrained(module, RunPaths.of(runs, cfg.name, fold).best)


def write_debug_runs(runs: Path) -> Path:
    """Untrained folds 0 and 1 of the debug segmenter and of the debug gate under ``runs``."""
    for config in (DEBUG, DEBUG_GATE):
        for fold in (0, 1):
            write_untrained(runs, config, fold)
    return runs


def _debug_keys(out: Path, runs: Path, data: Path) -> dict[str, object]:
    """What the tests set in the debug ensemble: these runs and data, folds 0 and 1 of the debug
    segmenter and gate, the tuned thresholds and the leaderboard in ``out``."""
    return {
        "runs_dir": str(runs),
        "data_dir": str(data),
        "members": [{"config": str(DEBUG), "folds": [0, 1]}],
        "gate": {"config": str(DEBUG_GATE), "folds": [0, 1]},
        "postprocess": {"thresholds_file": str(out / "thresholds.json")},
        "leaderboard": str(out / "leaderboard.csv"),
    }


def debug_ensemble(out: Path, runs: Path, data: Path, *overrides: str) -> EnsembleConfig:
    """The debug ensemble on these runs and data, its outputs under ``out``."""
    # JSON is YAML: each key is an override as --set reads it
    keys = [f"{key}={json.dumps(value)}" for key, value in _debug_keys(out, runs, data).items()]
    return load_ensemble_config(ENSEMBLE, [*keys, *overrides])


def debug_ensemble_file(folder: Path, runs: Path, data: Path, **keys: object) -> Path:
    """The debug ensemble over ``runs`` (TTA none) as ``folder/ensemble.yaml``, its tuned files and
    leaderboard in ``folder`` too; ``keys`` replace its top-level keys."""
    tree = yaml.safe_load(ENSEMBLE.read_text())
    tree.update(_debug_keys(folder, runs, data), tta=["none"])
    tree.update(keys)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ensemble.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path
