"""What the sweep's tests share: the debug configs, one quick epoch, an ensemble file over them, a
sweep refused before any job, and how to watch a running job (its child processes, its checkpoint's
step)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from tests.cli_contract import assert_one_error_line, run_in_process
from tests.repository import ROOT

DEBUG = ROOT / "configs" / "debug.yaml"
GATE = ROOT / "configs" / "debug_classifier.yaml"

# One quick epoch: 2 training batches of small crops (the full validation fold stays).
QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "augment.crop_height=128",
    "augment.crop_width=256",
]


def sets(*overrides: str) -> list[str]:
    """``--set`` before each override."""
    return [argument for override in overrides for argument in ("--set", override)]


def ensemble_file(
    tmp_path: Path, data_dir: Path, members: object = None, folds=(0, 1), gate: Path = GATE
) -> Path:
    """An ensemble file in ``tmp_path``: ``members`` (default: the debug segmenter on ``folds``), the
    gate on ``folds``, a small search grid."""
    folds = list(folds)
    path = tmp_path / "ensemble.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "runs_dir": str(tmp_path / "runs"),
                "data_dir": str(data_dir),
                "members": members or [{"config": str(DEBUG), "folds": folds}],
                "tta": ["none"],
                "gate": {"config": str(gate), "folds": folds},
                "search": {"min_areas": [0, 100], "gates": [0.0, 0.5]},
            }
        )
    )
    return path


def children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:  # the field after the state: ppid
                found.append(int(entry.name))
    return found


def last_step(path: Path) -> int:
    """The global step of a checkpoint; -1 while there is none (or it is being replaced)."""
    if not path.is_file():
        return -1
    try:
        return int(torch.load(path, weights_only=False, map_location="cpu")["global_step"])
    except Exception:  # noqa: BLE001 - being replaced right now; read again
        return -1


def refused(tmp_path: Path, *args: object, members: object = None, gate: Path = GATE) -> str:
    """The one error line of a local sweep over ``members`` that must be refused before any job."""
    ensemble = ensemble_file(tmp_path, tmp_path / "data", members, gate=gate)
    outcome = run_in_process("sweep", "--config", ensemble, "--executor", "local", *args)
    line = assert_one_error_line(outcome)
    assert not (tmp_path / "runs" / "sweep_logs").exists()  # nothing submitted
    return line


def second_stage(tmp_path: Path) -> Path:
    """A full-image fine-tune of the debug model that starts from its crops stage (configs/debug.yaml)."""
    tree = yaml.safe_load(DEBUG.read_text())
    tree.update(name="debug_full", init_from=str(DEBUG))
    tree["augment"] = {"crop_height": None, "crop_width": None}
    path = tmp_path / "debug_full.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path
