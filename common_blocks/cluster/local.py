"""Running a sweep on this machine with submitit's ``LocalExecutor``: the runs at most
``array_parallelism`` at a time (one GPU group each), each after its earlier stage's run, then the
OOF search once all of them succeeded. submitit keeps each job's pickles and logs in
``OUT_DIR/sweep_logs/<job id>/``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common_blocks.cluster.outcomes import finished_line, job_outcome, log_line
from common_blocks.cluster.plan import PlannedRun, SweepPlan
from common_blocks.cluster.resources import MAX_TIMEOUTS, SLURM_SIGNAL_DELAY_S, Resources, visible_gpus
from common_blocks.errors import Interrupted, PipelineError
from common_blocks.inference.options import PredictOptions

LOCAL_POLL_S = 0.5


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
        gpus = visible_gpus()
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
    options: PredictOptions = PredictOptions(),
    report: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Run the sweep's jobs on this machine: the runs ``array_parallelism`` at a time, then (when all
    succeeded) the OOF search; returns the OOF report (None with ``train_only``). Failed runs are
    listed in one error after the others finished; Ctrl-C stops the running jobs (their last.ckpt kept)."""
    threads = f", {res.cpu_threads} torch thread(s) each" if res.cpu_threads is not None else ""
    report(f"{plan.describe()}; on this machine, {res.array_parallelism} at a time{threads}")
    for run in plan.runs:
        if run.state.action == "finished":
            report(f"  {run.label}: finished already, skipped")
    runner = _LocalRunner(plan, res, report)
    try:
        return _run_local(plan, runner, options, report)
    finally:
        with contextlib.suppress(OSError):  # the empty folder submitit's local controller makes of "%j"
            (plan.logs_dir / "%j").rmdir()


def _next_ready(pending: list[PlannedRun], runner: _LocalRunner) -> PlannedRun | None:
    """The first pending run whose earlier stage (if any) is neither pending nor running."""
    waiting = {run.label for run in pending} | {label for label, _ in runner.running.values()}
    return next((run for run in pending if run.after not in waiting), None)


def _run_local(
    plan: SweepPlan, runner: _LocalRunner, options: PredictOptions, report: Callable[[str], None]
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
                    report(f"  {run.label}: {run.state.describe()}: {log_line(job)}")
            time.sleep(LOCAL_POLL_S)
            for label, job in runner.finished():
                result, problem = job_outcome(job)
                if problem:
                    failed.append(label)
                    report(f"  {label}: failed ({log_line(job)}): {problem}")
                else:
                    report(finished_line(label, result))
        if failed:
            then = "" if plan.train_only else "; the OOF search was not run"
            raise PipelineError(
                f"{len(failed)} of {len(plan.to_train)} runs failed ({', '.join(failed)}; see their logs){then}; "
                "the same command again skips the finished runs and continues the others"
            )
        if plan.train_only:
            return None
        job = runner.submit(0, "OOF search", plan.oof_job(options), runner.slots[0][:1])
        report(f"  OOF search: {log_line(job)}")
        while runner.running and not runner.finished():
            time.sleep(LOCAL_POLL_S)
        result, problem = job_outcome(job)
    except KeyboardInterrupt:
        stopped = runner.stop()
        were = "was" if len(stopped) == 1 else "were"
        which = f" ({', '.join(stopped)} {were} running; each keeps its last.ckpt)" if stopped else ""
        raise Interrupted(
            f"sweep {plan.ensemble.name} stopped{which}; run the same command again to continue"
        ) from None
    if problem:
        raise PipelineError(f"the OOF search failed ({log_line(job)}): {problem}")
    report(result["text"])
    return result
