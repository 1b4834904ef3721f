"""``severstal sweep``: every (family, fold) run of an ensemble as one job array, then its OOF search.

``plan_sweep`` does every check in the submitting process, before anything is queued: the ensemble
and each training config (with ``--set``, ``--data-dir``, ``--pseudo``), the folds file (written
once here when missing, so parallel jobs never race to write it) and each fold, each run folder
(finished: skipped; with a ``last.ckpt``: continued, which must be a checkpoint ``--resume``
accepts; empty: started) and the OOF outputs. ``submit_slurm`` submits the runs still to do as one
Slurm job array and the OOF search as a job that starts once all of them succeeded (``afterok``);
``run_local`` runs the same jobs on this machine with submitit's ``LocalExecutor``, at most
``array_parallelism`` at a time (one GPU group each), and the OOF search after them. submitit keeps
each job's pickles and logs in ``OUT_DIR/sweep_logs/<job id>/``.

Staged training: a training config whose ``init_from`` names an earlier stage's config adds that
stage's runs of the same folds to the sweep, and each run starts after its earlier stage's run of
its fold has succeeded (on Slurm: one job array per stage, each ``afterok`` the one before).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common_blocks.cluster.jobs import OofJob, RunState, TrainJob, run_state
from common_blocks.config_io import YAML_SUFFIXES, config_name
from common_blocks.errors import ConfigError, Interrupted, PipelineError
from common_blocks.files import check_output_dir
from common_blocks.inference.ensemble_config import EnsembleConfig, load_ensemble_config
from common_blocks.inference.oof import check_outputs, common_folds, training_data
from common_blocks.run_folder import RunPaths
from common_blocks.training.config import TrainConfig, load_config
from common_blocks.training.datamodule import check_fold, labelled_folds, write_missing_folds
from common_blocks.training.runner import SetAside

MAX_TIMEOUTS = 20  # requeues after a time limit per job; preemptions do not count
SLURM_TIMEOUT_MIN = 240  # a job that hits it is requeued and continues from last.ckpt
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes
SLURM_SIGNAL_DELAY_S = 90  # USR2 this long before the time limit
LOCAL_POLL_S = 0.5


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

    def oof_job(self, batch_size: int = 4, workers: int | None = None) -> OofJob:
        return OofJob(self.ensemble, self.workdir, batch_size, workers)

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
) -> SweepPlan:
    """Check everything a sweep needs and decide what each run's job does (see the module docstring).

    ``train_overrides`` (``--set``) apply to every training config; every run trains on the ensemble's
    ``data_dir`` (``data_dir`` overrides it), which the OOF search validates on; ``out_dir`` (default:
    the ensemble's ``runs_dir``) is the runs folder.
    """
    ensemble_path = Path(ensemble_path)
    ensemble = load_ensemble_config(ensemble_path, [f"data_dir={data_dir}"] if data_dir is not None else [])
    out_dir = Path(out_dir) if out_dir is not None else ensemble.runs_dir
    ensemble = ensemble.model_copy(update={"runs_dir": out_dir})
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
        check_outputs(ensemble)

    workdir = Path.cwd()
    runs = []
    for name, (_, cfg) in sorted(configs.items(), key=lambda item: _stage(item[1][1], configs)):
        parent = config_name(cfg.parent_stage) if cfg.parent_stage is not None else None
        for fold in folds[name]:
            paths = RunPaths.of(out_dir, name, fold)
            check_output_dir(paths.root, "the run folder")
            SetAside(paths).recover()  # what a process killed mid --overwrite left, as train_fold settles it
            job = TrainJob(cfg, fold, out_dir, workdir, devices, num_nodes)
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


@dataclass(frozen=True)
class Resources:
    """What each training job gets: GPUs (and as many processes: one DDP rank per GPU), nodes, a time
    limit, and how many jobs run at once."""

    gpus_per_job: int
    timeout_min: int
    array_parallelism: int | None  # None (Slurm): every run at once
    num_nodes: int = 1
    partition: str | None = None
    slurm_options: dict[str, str] = field(default_factory=dict)

    @property
    def devices(self) -> int:
        """Lightning's ``devices`` per node: the GPUs, or one CPU process without them."""
        return max(1, self.gpus_per_job)


def _visible_gpus() -> list[int]:
    """This machine's GPUs as the indices CUDA_VISIBLE_DEVICES names (all of them when it is unset)."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None or not count:
        return list(range(count))
    entries = [entry.strip() for entry in listed.split(",") if entry.strip()]
    if not all(entry.isdigit() for entry in entries):
        raise ConfigError(
            f"CUDA_VISIBLE_DEVICES={listed}: the local executor gives each job its own GPUs by index; "
            "list the GPUs as indices (0,1,...)"
        )
    return [int(entry) for entry in entries[:count]]


def resolve_resources(
    executor: str,
    gpus_per_job: int | None = None,
    timeout_min: int | None = None,
    array_parallelism: int | None = None,
    num_nodes: int = 1,
    partition: str | None = None,
    slurm_options: dict[str, str] | None = None,
) -> Resources:
    """The resources of a sweep, defaults filled in. Slurm: 1 GPU per job, every run at once, 4 hours
    a job (then requeued). Local: the visible GPUs shared out, one per job (one job at a time without
    a GPU), no time limit."""
    if executor == "slurm":
        return Resources(
            1 if gpus_per_job is None else gpus_per_job,
            SLURM_TIMEOUT_MIN if timeout_min is None else timeout_min,
            array_parallelism,
            num_nodes,
            partition,
            dict(slurm_options or {}),
        )
    gpus = _visible_gpus()
    if gpus_per_job is None:
        gpus_per_job = 1 if gpus else 0
    if gpus_per_job > len(gpus):
        raise ConfigError(f"--gpus-per-job {gpus_per_job}: this machine has {len(gpus)} visible GPU(s)")
    slots = len(gpus) // gpus_per_job if gpus_per_job else 1
    if array_parallelism is None:
        array_parallelism = slots
    elif gpus_per_job and array_parallelism > slots:
        raise ConfigError(
            f"--array-parallelism {array_parallelism} x --gpus-per-job {gpus_per_job} needs "
            f"{array_parallelism * gpus_per_job} GPUs; this machine has {len(gpus)} visible"
        )
    return Resources(
        gpus_per_job, LOCAL_TIMEOUT_MIN if timeout_min is None else timeout_min, array_parallelism
    )


def _last_line(text: str) -> str:
    """The line that says why a job failed: the last line of its traceback, without the module path."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    line = lines[-1] if lines else "failed"
    # "common_blocks.errors.DataError: ..." -> "DataError: ..."
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(\w+):", r"\1:", line)


def _outcome(job: Any) -> tuple[Any, str | None]:
    """(result, None) of a job that ended, or (None, the line saying why it failed). The result file
    is read as soon as it is written; a job that ended without one is asked submitit's way."""
    from submitit.core.utils import pickle_load

    path = job.paths.result_pickle
    if not path.exists():
        job.wait()
    if path.exists():
        try:
            outcome, value = pickle_load(path)
        except EOFError:  # still being renamed into place on a slow file system
            time.sleep(2)
            outcome, value = pickle_load(path)
        return (value, None) if outcome == "success" else (None, _last_line(str(value)))
    error = job.exception()
    text = str(error) if error is not None else "ended without a result"
    return None, _last_line(text.split("----------------------")[1] if text.count("-" * 22) >= 2 else text)


def _log_line(job: Any) -> str:
    return f"job {job.job_id}, log {job.paths.stderr}"


def _finished_line(label: str, result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return f"  {label}: finished already, skipped"
    return f"  {label}: done, score {result['score']:.4f} ({result['epochs']} epochs)"


# --- Slurm ------------------------------------------------------------------------------------------


def _slurm_executor(folder: Path, **parameters: Any):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=MAX_TIMEOUTS)
    executor.update_parameters(**{key: value for key, value in parameters.items() if value is not None})
    return executor


def _submitted(submit: Callable[[], Any], what: str) -> Any:
    """``submit()``; sbatch refusing the job is one error line with its reason."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        return submit()
    except (FailedJobError, FailedSubmissionError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise PipelineError(f"sbatch refused {what}: {lines[-1] if lines else error}") from None


def slurm_parameters(plan: SweepPlan, res: Resources) -> dict[str, Any]:
    """The sbatch parameters of the training array: one task (a DDP rank) per GPU on each node."""
    workers = max(
        cfg.data.num_workers for cfg in {run.job.cfg.name: run.job.cfg for run in plan.runs}.values()
    )
    return {
        "job_name": f"{plan.ensemble.name}-train",
        "partition": res.partition,
        "time": res.timeout_min,
        "nodes": res.num_nodes,
        "ntasks_per_node": res.devices,
        "gpus_per_node": res.gpus_per_job or None,
        "cpus_per_task": workers + 1,
        "signal_delay_s": SLURM_SIGNAL_DELAY_S,
        "array_parallelism": res.array_parallelism or max(1, len(plan.to_train)),
        "additional_parameters": res.slurm_options or None,
    }


def submit_slurm(
    plan: SweepPlan,
    res: Resources,
    batch_size: int = 4,
    workers: int | None = None,
    wait: bool = False,
    report: Callable[[str], None] = print,
) -> None:
    """Submit the runs to do as one job array and the OOF search after them (``afterok``); print the job
    ids and logs; with ``wait``, wait for the last job and fail as it does."""
    report(plan.describe())
    for run in plan.runs:
        if run.state.action == "finished":
            report(f"  {run.label}: finished already, skipped")
    jobs, runs, array_id = [], [], None
    for stage in plan.stages:  # one array per stage, each after the one before
        parameters = slurm_parameters(plan, res)
        if array_id is not None:
            parameters["dependency"] = f"afterok:{array_id}"
        executor = _slurm_executor(plan.logs_dir, **parameters)
        array = [run.job for run in stage]
        stage_jobs = _submitted(lambda e=executor, a=array: e.submit_array(a), "the job array")
        array_id = stage_jobs[0].job_id.split("_")[0]
        after = (
            f" (after array {parameters['dependency'].split(':')[1]})" if "dependency" in parameters else ""
        )
        for run, job in zip(stage, stage_jobs):
            report(f"  {run.label}: {run.state.describe()}: {_log_line(job)}{after}")
        jobs += stage_jobs
        runs += stage
    oof = None
    if not plan.train_only:
        executor = _slurm_executor(
            plan.logs_dir,
            job_name=f"{plan.ensemble.name}-oof",
            partition=res.partition,
            time=res.timeout_min,
            nodes=1,
            ntasks_per_node=1,
            gpus_per_node=1 if res.gpus_per_job else None,
            # run_oof's loader: --workers, else 2 decoding workers with a GPU and none without one
            cpus_per_task=(workers if workers is not None else 2 if res.gpus_per_job else 0) + 1,
            dependency=f"afterok:{array_id}" if array_id else None,
            additional_parameters=res.slurm_options or None,
        )
        oof = _submitted(lambda: executor.submit(plan.oof_job(batch_size, workers)), "the OOF job")
        after = f", starts when array {array_id} has succeeded (afterok)" if array_id else ""
        report(f"  OOF search: {_log_line(oof)}{after}")
    report(
        f"logs: {plan.logs_dir}/<job id>/<job id>_0_log.out and .err; a preempted or timed-out job is requeued "
        "and continues from its last.ckpt; after a failure, the same command again continues every unfinished run"
    )
    if not wait:
        return
    for run, job in zip(runs, jobs):
        result, problem = _outcome(job)
        report(
            f"  {run.label}: failed ({_log_line(job)}): {problem}"
            if problem
            else _finished_line(run.label, result)
        )
    if oof is not None:
        result, problem = _outcome(oof)
        if problem:
            raise PipelineError(f"the OOF search failed ({_log_line(oof)}): {problem}")
        report(result["text"])


# --- this machine ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_into(path: Path) -> Iterator[None]:
    """Processes started inside write their stdout and stderr to ``path``: submitit's local controller
    inherits them, and on Ctrl-C it prints a traceback, which must not reach the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as log:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        finally:
            for fd, target in zip(saved, (1, 2)):
                os.dup2(fd, target)
                os.close(fd)


class _LocalRunner:
    """submitit's LocalExecutor with a job array's parallelism: at most one job per GPU group at a time."""

    def __init__(self, plan: SweepPlan, res: Resources, report: Callable[[str], None]) -> None:
        import submitit

        self.plan, self.res, self.report = plan, res, report
        self.executor = submitit.LocalExecutor(folder=plan.logs_dir / "%j", max_num_timeout=MAX_TIMEOUTS)
        gpus = _visible_gpus()
        per_job = res.gpus_per_job
        self.slots = [tuple(gpus[i * per_job : (i + 1) * per_job]) for i in range(res.array_parallelism)]
        self.running: dict[int, tuple[str, Any]] = {}

    def submit(self, slot: int, label: str, function: Callable[[], Any], gpus: tuple[int, ...]) -> Any:
        timeout_s = self.res.timeout_min * 60
        self.executor.update_parameters(
            timeout_min=self.res.timeout_min,
            signal_delay_s=min(SLURM_SIGNAL_DELAY_S, max(1, timeout_s // 4)),
            tasks_per_node=1,  # Lightning starts the other DDP processes of a multi-GPU job itself
            gpus_per_node=len(gpus),
            visible_gpus=gpus,
        )
        with _output_into(self.plan.logs_dir / "local_controllers.log"):
            job = self.executor.submit(function)
        self.running[slot] = (label, job)
        return job

    def finished(self) -> list[tuple[str, Any]]:
        """The jobs that ended since the last call, their slots freed: a job has ended once its
        result is written (its process may still be shutting down) or its process is gone."""
        ended = [
            slot for slot, (_, job) in self.running.items() if job.paths.result_pickle.exists() or job.done()
        ]
        return [self.running.pop(slot) for slot in ended]

    def stop(self) -> list[str]:
        """Ctrl-C: stop every running job (SIGINT, as Ctrl-C would); the labels of those stopped."""
        stopped = []
        for label, job in self.running.values():
            job.cancel()
            stopped.append(label)
        deadline = time.time() + 30
        while time.time() < deadline and any(not job.done() for _, job in self.running.values()):
            time.sleep(LOCAL_POLL_S)
        self.running.clear()
        return stopped


def run_local(
    plan: SweepPlan,
    res: Resources,
    batch_size: int = 4,
    workers: int | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Run the sweep's jobs on this machine: the runs ``array_parallelism`` at a time, then (when all
    succeeded) the OOF search; returns the OOF report (None with ``train_only``). Failed runs are
    listed in one error after the others finished; Ctrl-C stops the running jobs (their last.ckpt kept)."""
    report(f"{plan.describe()}; on this machine, {res.array_parallelism} at a time")
    for run in plan.runs:
        if run.state.action == "finished":
            report(f"  {run.label}: finished already, skipped")
    runner = _LocalRunner(plan, res, report)
    try:
        return _run_local(plan, runner, batch_size, workers, report)
    finally:
        with contextlib.suppress(OSError):  # the empty folder submitit's local controller makes of "%j"
            (plan.logs_dir / "%j").rmdir()


def _next_ready(pending: list[PlannedRun], runner: _LocalRunner) -> PlannedRun | None:
    """The first pending run whose earlier stage (if any) is neither pending nor running."""
    waiting = {run.label for run in pending} | {label for label, _ in runner.running.values()}
    return next((run for run in pending if run.after not in waiting), None)


def _run_local(
    plan: SweepPlan, runner: _LocalRunner, batch_size: int, workers: int | None, report: Callable[[str], None]
) -> dict[str, Any] | None:
    pending = list(plan.to_train)
    failed: list[str] = []
    try:
        while pending or runner.running:
            for run in [run for run in pending if run.after in failed]:
                pending.remove(run)
                failed.append(run.label)
                report(f"  {run.label}: not started: its earlier stage {run.after} failed")
            for slot, gpus in enumerate(runner.slots):
                run = _next_ready(pending, runner)
                if run is not None and slot not in runner.running:
                    pending.remove(run)
                    job = runner.submit(slot, run.label, run.job, gpus)
                    report(f"  {run.label}: {run.state.describe()}: {_log_line(job)}")
            time.sleep(LOCAL_POLL_S)
            for label, job in runner.finished():
                result, problem = _outcome(job)
                if problem:
                    failed.append(label)
                    report(f"  {label}: failed ({_log_line(job)}): {problem}")
                else:
                    report(_finished_line(label, result))
        if failed:
            then = "" if plan.train_only else "; the OOF search was not run"
            raise PipelineError(
                f"{len(failed)} of {len(plan.to_train)} runs failed ({', '.join(failed)}; see their logs){then}; "
                "the same command again skips the finished runs and continues the others"
            )
        if plan.train_only:
            return None
        job = runner.submit(0, "OOF search", plan.oof_job(batch_size, workers), runner.slots[0][:1])
        report(f"  OOF search: {_log_line(job)}")
        while runner.running and not runner.finished():
            time.sleep(LOCAL_POLL_S)
        result, problem = _outcome(job)
    except KeyboardInterrupt:
        stopped = runner.stop()
        were = "was" if len(stopped) == 1 else "were"
        which = f" ({', '.join(stopped)} {were} running; each keeps its last.ckpt)" if stopped else ""
        raise Interrupted(
            f"sweep {plan.ensemble.name} stopped{which}; run the same command again to continue"
        ) from None
    if problem:
        raise PipelineError(f"the OOF search failed ({_log_line(job)}): {problem}")
    report(result["text"])
    return result
