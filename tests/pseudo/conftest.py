"""The pseudo-label tests' ensemble: untrained debug checkpoints whose gate is unsure of everything."""

from pathlib import Path

import pytest
import torch
import yaml

from common_blocks.run_folder import RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.module import DefectModule
from tests.repository import ROOT
from tests.stand_ins import save_untrained


@pytest.fixture(scope="module")
def untrained_ensemble(synthetic_data, tmp_path_factory) -> Path:
    """An ensemble config over untrained debug checkpoints (segmenter and gate, fold 0); the gate's head
    is zeroed, so it says 0.5 for every class of every image: unsure by any thresholds."""
    folder = tmp_path_factory.mktemp("ensemble")
    refs = {}
    for role, config in (("member", "debug.yaml"), ("gate", "debug_classifier.yaml")):
        cfg = load_config(ROOT / "configs" / config, [f"data.data_dir={synthetic_data}"])
        module = DefectModule(cfg.model_dump(mode="json"), 0)
        if module.is_classifier:
            torch.nn.init.zeros_(module.model.get_classifier().weight)
            torch.nn.init.zeros_(module.model.get_classifier().bias)
        save_untrained(module, RunPaths.of(folder / "runs", cfg.name, 0).best)
        refs[role] = {"config": str(ROOT / "configs" / config), "folds": [0]}
    tree = {"runs_dir": str(folder / "runs"), "data_dir": str(synthetic_data), "members": [refs["member"]],
            "gate": refs["gate"]}  # fmt: skip
    path = folder / "ensemble.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path
