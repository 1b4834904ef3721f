"""The offline Kaggle bundle: one folder, uploaded as a Kaggle dataset, from which a notebook with the
internet off installs the pipeline and writes the submission.

``severstal bundle --config ENSEMBLE.yaml --out DIR`` writes::

    DIR/README.md            the two notebook lines (pip install, severstal infer) with their paths
    DIR/severstal-bundle.json  the mark of a bundle: ``--overwrite`` replaces only a folder that has it
    DIR/ensemble.yaml        the ensemble config, naming the files below by paths relative to DIR
    DIR/thresholds.json      the tuned post-processing, when the ensemble has one
    DIR/runs/NAME/foldK/     each checkpoint the ensemble loads, without its training state (optimizer,
                             schedules, loops: 2/3 of an Adam checkpoint), and config.yaml, the
                             training config the checkpoint carries
    DIR/requirements.txt     the project and DEPENDENCY_WHEELS, pinned to the versions installed here
    DIR/wheels/              their wheels

Every checkpoint is loaded as inference loads it before it is bundled, so a file the notebook could
not read is an error here. The folder is built beside DIR and renamed into place: it appears whole
or not at all, and ``--overwrite`` replaces an earlier bundle only then. No other folder is ever replaced,
nor one that is, holds or lies inside an input (the ensemble's data and runs, its configs).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from common_blocks.deploy.bundle_wheels import (
    PROJECT,
    build_project_wheel,
    dependency_wheels,
    find_wheels,
    installed_versions,
    pinned,
    project_root,
)
from common_blocks.errors import ConfigError
from common_blocks.files import OutputError, check_apart, is_write_failure
from common_blocks.output_folders import check_replaceable, replaced_folder

if TYPE_CHECKING:
    from common_blocks.inference.ensemble_config import EnsembleConfig, RunRef

KAGGLE_INPUT = PurePosixPath("/kaggle/input")
KAGGLE_DATA = KAGGLE_INPUT / "severstal-steel-defect-detection"
KAGGLE_SUBMISSION = PurePosixPath("/kaggle/working/submission.csv")

# What inference needs beyond Kaggle's Python image. The image has torch, torchvision, numpy, pandas,
# opencv, albumentations, timm (with huggingface-hub and safetensors), pyyaml, tqdm, matplotlib and
# numba; it lacks these, or may have them older than the pipeline needs. The one list to change.
# Lightning and torchmetrics are training's: inference runs the plain network without them.
DEPENDENCY_WHEELS: tuple[str, ...] = (
    "segmentation-models-pytorch",  # 0.6: not in the image
    "pydantic",  # 2.x with its exact pydantic-core; the image's may be older
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",  # pydantic-core needs a recent one
)

README = "README.md"
MARKER = "severstal-bundle.json"
MARKER_FORMAT = "severstal-bundle/1"
ENSEMBLE = "ensemble.yaml"
THRESHOLDS = "thresholds.json"
REQUIREMENTS = "requirements.txt"
RUNS = "runs"
WHEELS = "wheels"
# Lightning's training state in a checkpoint: needed to resume training, never to predict.
TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks")
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Bundle:
    """What ``build_bundle`` wrote, for the command's summary."""

    out: Path
    dataset: str
    checkpoints: list[str]  # paths inside the bundle
    wheels: list[str]  # file names in wheels/
    thresholds: bool
    size: int  # bytes
    lines: tuple[str, str]  # the notebook's
    warnings: list[str] = field(default_factory=list)

    def format(self) -> str:
        tuned = "tuned thresholds, " if self.thresholds else ""
        return "\n".join(
            [
                f"wrote the bundle {self.out}: {len(self.checkpoints)} checkpoint(s), {tuned}"
                f"{len(self.wheels)} wheel(s), {self.size / 2**20:.1f} MiB",
                f"upload it as the Kaggle dataset {self.dataset}; in the notebook (internet off), as "
                f"{self.out / README} says:",
                *(f"  !{line}" for line in self.lines),
            ]
        )


def check_bundle_folder(out: Path, overwrite: bool) -> Path:
    """``out`` as the bundle folder, checked before anything loads: a new or empty folder, or with
    ``overwrite`` an earlier bundle; never the working directory or one above it."""
    return check_replaceable(
        out, "the bundle folder (--out)", overwrite=overwrite, kind="a bundle", marker=(MARKER, MARKER_FORMAT)
    )


def dataset_name(out: Path, name: str | None) -> str:
    """The Kaggle dataset the bundle is uploaded as (``/kaggle/input/NAME``): ``name``, else the
    bundle folder's name."""
    chosen = name if name is not None else Path(os.path.abspath(out)).name
    if not _DATASET_NAME.fullmatch(chosen):
        source = "--kaggle-dataset" if name is not None else f"the folder name of --out {out}"
        raise ConfigError(
            f"{source}: {chosen!r} is no Kaggle dataset name (letters, digits, '.', '_', '-'); "
            "give one with --kaggle-dataset NAME"
        )
    return chosen


def notebook_lines(dataset: str, data_dir: str) -> tuple[str, str]:
    """The notebook's two shell lines: install the bundled wheels, then predict from the bundle."""
    root = KAGGLE_INPUT / dataset
    return (
        f"pip install --no-index --find-links {shlex.quote(str(root / WHEELS))} "
        f"-r {shlex.quote(str(root / REQUIREMENTS))}",
        f"cd {shlex.quote(str(root))} && severstal infer --config {ENSEMBLE} "
        f"--data-dir {shlex.quote(data_dir)} --out {KAGGLE_SUBMISSION}",
    )


def bundle_checkpoint(source: Path, target: Path, ref: RunRef, fold: int) -> dict[str, Any]:
    """Write ``source`` (``ref``'s checkpoint of ``fold``) to ``target`` without its training state,
    once inference has loaded it (a file it cannot load, or of another fold or run, is an error
    naming it); returns the training config it carries."""
    import torch

    from common_blocks.inference.ensemble_checkpoints import load_slot

    load_slot(source, ref, fold)
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    for key in TRAINING_STATE:
        checkpoint.pop(key, None)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, target)
    return checkpoint["hyper_parameters"]["config"]


def bundled_config(cfg: EnsembleConfig, data_dir: str, thresholds: bool) -> dict[str, Any]:
    """``cfg`` pointing at the bundle: runs by name under runs/, the thresholds beside it, the data
    where the notebook has it; what only tuning and training use (the leaderboard) is left out."""
    tree = cfg.model_dump(mode="json")
    tree.update(runs_dir=RUNS, data_dir=data_dir, leaderboard=None)
    for entry, ref in zip(tree["members"], cfg.members, strict=True):
        entry["config"] = ref.name
    if cfg.gate is not None:
        tree["gate"]["config"] = cfg.gate.name
    tree["postprocess"]["thresholds_file"] = THRESHOLDS if thresholds else None
    return tree


def _tuned_thresholds(cfg: EnsembleConfig) -> Path | None:
    """The tuned thresholds file to bundle, checked as inference reads it; None when the default
    file is absent, an error when the config names a file that is absent."""
    cfg.resolved_postprocess()  # an unreadable or malformed file is an error naming it
    path = cfg.thresholds_path
    if path.is_file():
        return path
    if cfg.postprocess.thresholds_file is not None:
        raise ConfigError(
            f"{path}: postprocess.thresholds_file not found; run severstal oof to tune it, or leave "
            "the key out to bundle the config's default post-processing"
        )
    return None


def check_bundle_inputs(out: Path, cfg: EnsembleConfig, config_path: Path, files: list[Path]) -> None:
    """Replacing ``out`` must take no input of the bundle with it, and the bundle is not written
    among the ensemble's data or runs."""
    holds, within = cfg.inputs(config_path)
    check_apart(
        out,
        "the bundle",
        holds=[*holds, *(("an input of the bundle", path) for path in files)],
        within=within,
    )


def _readme(cfg: EnsembleConfig, dataset: str, data_dir: str, wheels: list[str], thresholds: bool) -> str:
    install, infer = notebook_lines(dataset, data_dir)
    members = ", ".join(f"{m.name} folds {m.folds}" for m in cfg.members)
    gate = f"{cfg.gate.name} folds {cfg.gate.folds}" if cfg.gate else "none"
    tuned = f"`{THRESHOLDS}` (tuned)" if thresholds else "the config's defaults (no tuned thresholds file)"
    python = (
        f"Python {sys.version_info.major}.{sys.version_info.minor} on {sys.platform} {platform.machine()}"
    )
    return "\n".join(
        [
            f"# Severstal ensemble `{cfg.name}`, offline bundle",
            "",
            f"Upload this folder as the Kaggle dataset `{dataset}`, add it and the competition data to a",
            "notebook with the internet off, and run these two lines in it:",
            "",
            "```",
            f"!{install}",
            f"!{infer}",
            "```",
            "",
            f"- `{ENSEMBLE}`: members {members}; gate {gate}; TTA {', '.join(cfg.tta)}; post-processing "
            f"{tuned}. Its paths are relative to this folder (hence the `cd`).",
            f"- `{RUNS}/NAME/foldK/`: the checkpoints (weights and config, without the training state) "
            "and the training config each carries, `config.yaml`.",
            f"- `{WHEELS}/`: {', '.join(wheels)}; `{REQUIREMENTS}` pins them. Picked for {python} "
            "(where the bundle was made): the notebook's Python must match for compiled wheels.",
            "",
        ]
    )


def _write_bundle(
    staging: Path,
    cfg: EnsembleConfig,
    checkpoints: dict[Path, tuple[Path, RunRef, int]],
    thresholds: Path | None,
    versions: dict[str, str],
    wheels_from: Path | None,
    dataset: str,
    data_dir: str,
) -> tuple[list[str], list[str]]:
    """Everything into ``staging``, wheels first (a download that fails wastes no checkpoint copy);
    returns the checkpoints and the wheels written."""
    import yaml
    from packaging.utils import parse_wheel_filename

    from common_blocks.inference.ensemble_config import load_ensemble_config
    from common_blocks.run_folder import RunPaths

    wheels = staging / WHEELS
    wheels.mkdir()
    project = build_project_wheel(project_root(), wheels)
    dependencies = dependency_wheels(versions, wheels_from, wheels)
    for source, (target, ref, fold) in checkpoints.items():
        config = bundle_checkpoint(source, staging / target, ref, fold)
        run = RunPaths(staging / target.parent)
        run.config.write_text(yaml.safe_dump(config, sort_keys=False))
    if thresholds is not None:
        shutil.copyfile(thresholds, staging / THRESHOLDS)
    tree = bundled_config(cfg, data_dir, thresholds is not None)
    header = "# Written by severstal bundle: paths are relative to this folder; run severstal infer here.\n"
    (staging / ENSEMBLE).write_text(header + yaml.safe_dump(tree, sort_keys=False, default_flow_style=None))
    # Read back as inference will read it from this folder: every checkpoint where it looks.
    local = [f"runs_dir={json.dumps(str(staging / RUNS))}"]
    if thresholds is not None:
        local.append(f"postprocess.thresholds_file={json.dumps(str(staging / THRESHOLDS))}")
    bundled = load_ensemble_config(staging / ENSEMBLE, local)
    bundled.check_checkpoints()
    bundled.resolved_postprocess()
    project_version = parse_wheel_filename(project.name)[1]
    pins = [f"{PROJECT}=={project_version}", *pinned(versions)]
    (staging / REQUIREMENTS).write_text("\n".join(pins) + "\n")
    names = [path.name for path in (project, *dependencies)]
    (staging / README).write_text(_readme(cfg, dataset, data_dir, names, thresholds is not None))
    return [target.as_posix() for target, _, _ in checkpoints.values()], names


def build_bundle(
    cfg: EnsembleConfig,
    out: Path,
    *,
    config_path: Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    dependencies: tuple[str, ...] = DEPENDENCY_WHEELS,
    wheels_from: Path | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Write the Kaggle bundle of ``cfg`` (read from ``config_path``) to ``out``.

    Everything is checked before the folder is started: ``out`` (see ``check_bundle_folder``), the
    checkpoints (all missing ones in one error), the tuned thresholds, the installed versions of
    ``dependencies`` and, with ``wheels_from``, their wheels there. A failure after that (a
    checkpoint inference cannot load, pip) leaves ``out`` as it was.
    """
    out = check_bundle_folder(out, overwrite)
    name = dataset_name(out, dataset)
    data = data_dir or str(KAGGLE_DATA)
    cfg.check_checkpoints()
    thresholds = _tuned_thresholds(cfg)
    versions = installed_versions(dependencies)
    if wheels_from is not None:
        find_wheels(wheels_from, versions)
    checkpoints = {
        ref.checkpoint_path(cfg.runs_dir, fold): (ref.checkpoint_path(Path(RUNS), fold), ref, fold)
        for ref in cfg.runs
        for fold in ref.folds
    }
    check_bundle_inputs(
        out,
        cfg,
        config_path,
        [*checkpoints, *([thresholds] if thresholds else []), *([wheels_from] if wheels_from else [])],
    )
    warnings = []
    if thresholds is None:
        warnings.append(
            f"{cfg.thresholds_path} not found: the bundle predicts with the config's default "
            "post-processing (run severstal oof to tune it first)"
        )
    try:
        with replaced_folder(out, "the bundle folder (--out)") as staging:
            written, wheels = _write_bundle(
                staging, cfg, checkpoints, thresholds, versions, wheels_from, name, data
            )
            (staging / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "ensemble": cfg.name}) + "\n")
            size = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
    except OSError as error:
        if not is_write_failure(error):
            raise
        raise OutputError(f"{out}: cannot write the bundle ({error.strerror or error})") from None
    lines = notebook_lines(name, data)
    return Bundle(out, name, written, wheels, thresholds is not None, size, lines, warnings)
