"""The plan of a ``severstal sweep``: every (family, fold) run of an ensemble and what each job will do.

``plan_sweep`` does every check in the submitting process, before anything is queued: the ensemble
and each training config (with ``--set``, ``--data-dir``, ``--pseudo``), the folds file (written
once here when missing, so parallel jobs never race to write it) and each fold, each run folder
(finished: skipped; with a ``last.ckpt``: continued, which must be a checkpoint ``--resume``
accepts; empty: started) and the OOF outputs. The executors (``slurm``, ``local``) run the plan.

Staged training: a training config whose ``init_from`` names an earlier stage's config adds that
stage's runs of the same folds to the sweep, and each run starts after its earlier stage's run of
its fold has succeeded (``SweepPlan.stages``; on Slurm: one job array per stage, each ``afterok``
the one before).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common_blocks.cluster.jobs import OofJob, RunState, TrainJob, run_state
from common_blocks.config_io import YAML_SUFFIXES, config_name
from common_blocks.errors import ConfigError, PipelineError
from common_blocks.files import check_output_dir
from common_blocks.inference.ensemble_config import EnsembleConfig, load_ensemble_config
from common_blocks.inference.oof_search import check_outputs, common_folds, training_data
from common_blocks.inference.options import PredictOptions
from common_blocks.one_writer import one_writer
from common_blocks.run_folder import RUN_FOLDER_BUSY, RunPaths
from common_blocks.training.config import TrainConfig, load_config
from common_blocks.training.folds_file import check_fold, labelled_folds, write_missing_folds
from common_blocks.training.run_folder_transaction import SetAside


@dataclass(frozen=True)
class PlannedRun:
    job: TrainJob
    state: RunState
    after: str | None = None  # the label of the earlier stage's run this one starts from
    stage: int = 0  # how many earlier stages it has

    @property
    def label(self) -> str:
        return self.job.label


@dataclass
class SweepPlan:
    """The ensemble (its ``runs_dir`` the sweep's runs folder), its runs and what each job will do."""

    ensemble: EnsembleConfig
    runs: list[PlannedRun]
    out_dir: Path
    workdir: Path
    train_only: bool = False

    @property
    def logs_dir(self) -> Path:
        """submitit's folder: ``<job id>/`` holds each job's pickles and ``<job id>_<task>_log.out/.err``."""
        return self.out_dir / "sweep_logs"

    @property
    def to_train(self) -> list[PlannedRun]:
        return [run for run in self.runs if run.state.action != "finished"]

    @property
    def stages(self) -> list[list[PlannedRun]]:
        """The runs to do, grouped by stage: each group starts when the one before has succeeded."""
        depth = max((run.stage for run in self.to_train), default=-1) + 1
        return [group for stage in range(depth) if (group := [r for r in self.to_train if r.stage == stage])]

    def oof_job(self, options: PredictOptions = PredictOptions()) -> OofJob:
        return OofJob(self.ensemble, self.workdir, options)

    def describe(self) -> str:
        counts = {
            action: sum(run.state.action == action for run in self.runs) for action in ("start", "resume")
        }
        finished = len(self.runs) - len(self.to_train)
        then = "" if self.train_only else ", then the OOF search"
        return (
            f"sweep {self.ensemble.name}: {len(self.runs)} run{'s' * (len(self.runs) != 1)} into {self.out_dir} ({counts['start']} to start, "
            f"{counts['resume']} to resume, {finished} finished){then}"
        )


def _refs(ensemble: EnsembleConfig) -> list[tuple[str, Any]]:
    refs = [(f"members[{i}]", member) for i, member in enumerate(ensemble.members)]
    return refs + ([("gate", ensemble.gate)] if ensemble.gate is not None else [])


def _check_tasks(
    ensemble_path: Path, ensemble: EnsembleConfig, configs: dict[str, tuple[str, TrainConfig]]
) -> None:
    """Members are segmenters of one mode and the gate a classifier or a class head, as the OOF search
    needs; a run may be both a member and the gate (its class head)."""
    modes = {}
    for where, ref in _refs(ensemble):
        cfg = configs[ref.name][1]
        if where == "gate":
            if cfg.task != "classification" and cfg.class_head is None:
                raise ConfigError(
                    f"{ensemble_path}: gate: {ref.name} is neither a classifier nor a segmenter with a "
                    f"class head (task: {cfg.task}, no class_head)"
                )
        elif cfg.task == "classification":
            raise ConfigError(f"{ensemble_path}: {where}: {ref.name} is a classifier; it belongs in gate:")
        else:
            modes[ref.name] = cfg.mode
    if len(set(modes.values())) > 1:
        listed = ", ".join(f"{name}: {mode}" for name, mode in modes.items())
        raise ConfigError(f"{ensemble_path}: the members must share one segmentation mode, got {listed}")


def sweep_ensemble(
    ensemble_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
) -> EnsembleConfig:
    """The ensemble a sweep trains, with ``data_dir`` (``--data-dir``) and its runs folder ``out_dir``
    (``--out-dir``, default its ``runs_dir``) put in."""
    ensemble = load_ensemble_config(ensemble_path, [f"data_dir={data_dir}"] if data_dir is not None else [])
    return ensemble.model_copy(
        update={"runs_dir": Path(out_dir) if out_dir is not None else ensemble.runs_dir}
    )


@contextmanager
def one_sweep(ensemble: EnsembleConfig) -> Iterator[None]:
    """One sweep of an ensemble at a time: a second would start the same runs (each run folder has one
    writer too) and the same OOF search. Held on ``RUNS_DIR/NAME``, the folder of its tuned files,
    while the sweep plans and runs (with Slurm: submits) its jobs."""
    check_output_dir(ensemble.runs_dir, "the runs folder (--out-dir)")
    with one_writer(ensemble.runs_dir / ensemble.name, f"the ensemble {ensemble.name} is being swept"):
        yield


def plan_sweep(
    ensemble_path: str | os.PathLike,
    *,
    train_overrides: Sequence[str] = (),
    data_dir: str | os.PathLike | None = None,
    pseudo: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    train_only: bool = False,
    devices: int = 1,
    num_nodes: int = 1,
    cpu_threads: int | None = None,
) -> SweepPlan:
    """Check everything a sweep needs and decide what each run's job does (see the module docstring).

    ``train_overrides`` (``--set``) apply to every training config; every run trains on the ensemble's
    ``data_dir`` (``data_dir`` overrides it), which the OOF search validates on; ``out_dir`` (default:
    the ensemble's ``runs_dir``) is the runs folder; ``devices``, ``num_nodes`` and ``cpu_threads`` are
    each training job's (``Resources``).
    """
    ensemble_path = Path(ensemble_path)
    ensemble = sweep_ensemble(ensemble_path, data_dir, out_dir)
    out_dir = ensemble.runs_dir
    # Every run trains on the data the OOF search validates on: the ensemble's (or --data-dir).
    overrides = [
        *train_overrides,
        f"data.data_dir={ensemble.data_dir}",
        *([f"pseudo.labels={pseudo}"] if pseudo is not None else []),
    ]
    check_output_dir(out_dir, "the runs folder (--out-dir)")
    check_output_dir(out_dir / "sweep_logs", "the sweep's log folder")

    configs: dict[str, tuple[str, TrainConfig]] = {}
    folds: dict[str, list[int]] = {}
    for where, ref in _refs(ensemble):
        if not ref.config.endswith(YAML_SUFFIXES):
            raise ConfigError(
                f"{ensemble_path}: {where}.config {ref.config!r} names a trained run; a sweep trains from "
                "training configs (configs/NAME.yaml)"
            )
        cfg = load_config(ref.config, overrides)
        if cfg.name != ref.name:
            raise ConfigError(
                f"--set name={cfg.name}: {ref.config} would train into {out_dir / cfg.name}, but the ensemble "
                f"loads it from {out_dir / ref.name}"
            )
        if cfg.name in configs and configs[cfg.name][1].digest() != cfg.digest():
            raise ConfigError(f"{ensemble_path}: two different training configs are named {cfg.name}")
        configs.setdefault(cfg.name, (where, cfg))
        folds.setdefault(cfg.name, [])
        folds[cfg.name] += [fold for fold in ref.folds if fold not in folds[cfg.name]]
    _add_earlier_stages(configs, folds, overrides)

    # The data and its folds, once per distinct data section; the folds file is written here when
    # missing, before any job could race another to write it.
    tables: dict[str, Any] = {}
    for name, (_, cfg) in configs.items():
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in tables:
            write_missing_folds(cfg)
            tables[key] = labelled_folds(cfg)
        for fold in folds[name]:
            try:
                check_fold(tables[key], fold)
            except PipelineError as error:
                raise PipelineError(f"{name} (in {ensemble_path}): {error}") from None

    if not train_only:  # what the OOF search needs, before hours of training
        _check_tasks(ensemble_path, ensemble, configs)
        common_folds(ensemble)
        training_data(ensemble, {name: cfg for name, (_, cfg) in configs.items()})
        check_outputs(ensemble, ensemble_path)

    workdir = Path.cwd()
    runs = []
    for name, (_, cfg) in sorted(configs.items(), key=lambda item: _stage(item[1][1], configs)):
        parent = config_name(cfg.parent_stage) if cfg.parent_stage is not None else None
        for fold in folds[name]:
            paths = RunPaths.of(out_dir, name, fold)
            check_output_dir(paths.root, "the run folder")
            with one_writer(paths.root, RUN_FOLDER_BUSY):  # not while a training writes it
                SetAside(
                    paths
                ).recover()  # what a process killed mid --overwrite left, as train_fold settles it
            job = TrainJob(cfg, fold, out_dir, workdir, devices, num_nodes, cpu_threads)
            after = f"{parent}/fold{fold}" if parent is not None else None
            runs.append(PlannedRun(job, run_state(paths, cfg, fold), after, _stage(cfg, configs)))
    return SweepPlan(ensemble, runs, out_dir, workdir, train_only)


def _add_earlier_stages(
    configs: dict[str, tuple[str, TrainConfig]], folds: dict[str, list[int]], overrides: list[str]
) -> None:
    """Add the earlier stages the configs start from (``init_from: configs/NAME.yaml``), with the folds
    of their later stages, into ``configs`` and ``folds``."""
    todo = list(configs)
    while todo:
        name = todo.pop()
        parent_path = configs[name][1].parent_stage
        if parent_path is None:
            continue
        parent = load_config(parent_path, overrides)
        if parent.name not in configs:
            configs[parent.name] = ("an earlier stage", parent)
            folds[parent.name] = []
            todo.append(parent.name)
        elif configs[parent.name][1].digest() != parent.digest():
            raise ConfigError(f"{parent_path}: two different training configs are named {parent.name}")
        folds[parent.name] += [fold for fold in folds[name] if fold not in folds[parent.name]]


def _stage(cfg: TrainConfig, configs: dict[str, tuple[str, TrainConfig]]) -> int:
    """How many earlier stages ``cfg`` starts from."""
    depth = 0
    while cfg.parent_stage is not None:
        if depth == len(configs):
            raise ConfigError(f"{cfg.parent_stage}: the stages' init_from form a cycle")
        cfg = configs[config_name(cfg.parent_stage)][1]
        depth += 1
    return depth
