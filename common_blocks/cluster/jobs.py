"""The jobs a sweep submits: one training run (a family's fold), and the ensemble's OOF search.

Both are ``submitit.helpers.Checkpointable`` callables. When Slurm signals a preemption or the coming
time limit (or the local executor its time limit), submitit calls ``checkpoint()``, which resubmits
the same job, and requeues it. A job decides what to do from its run folder each time it starts: a
run whose ``summary.json`` says it finished with this config is skipped, a run with a ``last.ckpt``
continues from it (``train_fold(..., resume=True)``), any other starts. So a requeued job continues
where the checkpoint of the killed one left off, and a job started twice does no work twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from submitit.helpers import Checkpointable

from common_blocks.errors import PipelineError
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.oof_search import run_oof
from common_blocks.inference.options import PredictOptions
from common_blocks.run_folder import RunPaths
from common_blocks.training.checkpoints import check_weights_fit, read_resume_point
from common_blocks.training.config import TrainConfig, load_config
from common_blocks.training.module import DefectModule
from common_blocks.training.runner import train_fold


def finished_summary(paths: RunPaths, cfg: TrainConfig, fold: int) -> dict[str, Any] | None:
    """The run's summary when it finished with this config (name and fold match, and the config digest
    or, from an older version of the pipeline, the run's config.yaml read today) and its best
    checkpoint is there; None otherwise (absent, unreadable, another config)."""
    if not (paths.summary.is_file() and paths.best.is_file()):
        return None
    try:
        summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    if (summary.get("name"), summary.get("fold")) != (cfg.name, fold):
        return None
    if summary.get("config_digest") != cfg.digest() and not _trained_as(paths, cfg):
        return None
    return summary


def _trained_as(paths: RunPaths, cfg: TrainConfig) -> bool:
    """Whether the run's own config.yaml, read by today's schema, trains as ``cfg`` does."""
    try:
        return cfg.trains_as(load_config(paths.config))
    except (PipelineError, OSError):
        return False


def _other_config(paths: RunPaths, cfg: TrainConfig) -> str:
    """``" (summary.json is of another config ...)"`` when the folder's summary is not this config's."""
    try:
        digest = json.loads(paths.summary.read_text(encoding="utf-8")).get("config_digest")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return ""
    if digest is None or digest == cfg.digest():
        return ""
    return f" (its summary.json is of another config: digest {digest}, this config's is {cfg.digest()})"


@dataclass(frozen=True)
class RunState:
    """What a job finds in its run folder: ``finished``, ``resume`` (from ``epoch``/``global_step``) or ``start``."""

    action: str
    epoch: int | None = None
    global_step: int | None = None

    def describe(self) -> str:
        if self.action == "resume":
            return f"resume from last.ckpt (epoch {self.epoch}, step {self.global_step})"
        return {"finished": "finished already, skipped", "start": "start"}[self.action]


def run_state(paths: RunPaths, cfg: TrainConfig, fold: int) -> RunState:
    """What a job for this run does; a PipelineError naming the folder when it can do neither (a
    ``last.ckpt`` that ``--resume`` refuses, or checkpoints without one)."""
    if finished_summary(paths, cfg, fold) is not None:
        return RunState("finished")
    if paths.last.is_file():
        try:
            point = read_resume_point(paths.last, cfg.trainer.max_epochs, fit_may_be_over=True)
            # as --resume does: the weights must fit the model this config builds
            check_weights_fit(point, DefectModule(cfg.model_dump(mode="json"), fold, pretrained=False))
        except PipelineError as error:
            raise PipelineError(
                f"{paths.label}: cannot continue the run{_other_config(paths, cfg)}: {error}; move the folder "
                "away, or start it over with `severstal train ... --overwrite`"
            ) from None
        return RunState("resume", point.epoch, point.global_step)
    if paths.best.exists() or paths.last.exists():
        raise PipelineError(
            f"{paths.root} has checkpoints but no last.ckpt to continue from{_other_config(paths, cfg)}; move "
            "the folder away, or start it over with `severstal train ... --overwrite`"
        )
    return RunState("start")


class TrainJob(Checkpointable):
    """Train ``cfg`` on ``fold`` into ``out_dir`` (``OUT_DIR/NAME/foldK``): skip it when finished,
    continue from ``last.ckpt`` when there is one, start it otherwise. Runs in ``workdir`` (where the
    sweep was planned), against which the config's relative paths (``data.data_dir``) are read, with
    ``cpu_threads`` torch threads when given (jobs sharing a CPU's cores)."""

    def __init__(
        self,
        cfg: TrainConfig,
        fold: int,
        out_dir: Path,
        workdir: Path,
        devices: int = 1,
        num_nodes: int = 1,
        cpu_threads: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.fold = fold
        self.out_dir = Path(out_dir)
        self.workdir = Path(workdir)
        self.devices = devices
        self.num_nodes = num_nodes
        self.cpu_threads = cpu_threads

    @property
    def paths(self) -> RunPaths:
        return RunPaths.of(self.out_dir, self.cfg.name, self.fold)

    @property
    def label(self) -> str:
        return f"{self.cfg.name}/fold{self.fold}"

    def __call__(self) -> dict[str, Any]:
        os.chdir(self.workdir)
        if self.cpu_threads is not None:
            torch.set_num_threads(self.cpu_threads)
        state = run_state(self.paths, self.cfg, self.fold)
        print(f"{self.label}: {state.describe()} (torch threads: {torch.get_num_threads()})", flush=True)
        if state.action == "finished":
            return {**finished_summary(self.paths, self.cfg, self.fold), "skipped": True}
        # Lightning after common_blocks.training, which declares torchvision's operators first.
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            summary = train_fold(
                self.cfg,
                self.fold,
                self.out_dir,
                self.devices,
                resume=state.action == "resume",
                num_nodes=self.num_nodes,
            )
        except SIGTERMException:
            # Lightning stops on SIGTERM with SystemExit(None), which would end the job as a success.
            raise RuntimeError(
                f"{self.label}: stopped by SIGTERM (cancelled or preempted); last.ckpt is kept, a requeued "
                "job or the same sweep again continues from it"
            ) from None
        return {**summary, "skipped": False}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's hook on preemption or time-out: requeue this same job; it continues from the
        run's newest ``last.ckpt`` (written every ``trainer.checkpoint_every_n_steps`` steps and at
        every validation), so at most those steps are trained again."""
        print(
            f"{self.label}: preempted or timed out; requeued, it continues from {self.paths.last}", flush=True
        )
        return super().checkpoint(*args, **kwargs)


class OofJob(Checkpointable):
    """The ensemble's OOF search (``severstal oof``) once its runs are trained; a requeued one starts over
    (its outputs are written together at the end, or not at all)."""

    def __init__(self, ensemble: EnsembleConfig, workdir: Path, options: PredictOptions = PredictOptions()):
        self.ensemble = ensemble
        self.workdir = Path(workdir)
        self.options = options

    def __call__(self) -> dict[str, Any]:
        from common_blocks.deploy.backend_choice import backend_runtime, choose_backend

        os.chdir(self.workdir)
        backend = choose_backend(self.options.backend, self.options.precision, self.options.exported)
        with backend_runtime(backend, self.ensemble, self.options.exported) as runtime:
            report = run_oof(self.ensemble, self.options, runtime)
        text = report.format()
        print(text, flush=True)
        return {**report.to_dict(), "text": text}
