"""Submitting a sweep to Slurm through submitit: the runs still to do as one job array per stage (each
``afterok`` the one before), the OOF search as a job that starts once all of them succeeded. submitit
requeues a preempted or timed-out job, which continues from its ``last.ckpt``; after a failure, the
same command again plans and submits every unfinished run. submitit keeps each job's pickles and logs
in ``OUT_DIR/sweep_logs/<job id>/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from common_blocks.cluster.outcomes import finished_line, job_outcome, log_line
from common_blocks.cluster.plan import SweepPlan
from common_blocks.cluster.resources import MAX_TIMEOUTS, SLURM_SIGNAL_DELAY_S, Resources
from common_blocks.errors import PipelineError
from common_blocks.inference.options import PredictOptions


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
    options: PredictOptions = PredictOptions(),
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
            report(f"  {run.label}: {run.state.describe()}: {log_line(job)}{after}")
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
            cpus_per_task=(options.workers if options.workers is not None else 2 if res.gpus_per_job else 0)
            + 1,
            dependency=f"afterok:{array_id}" if array_id else None,
            additional_parameters=res.slurm_options or None,
        )
        oof = _submitted(lambda: executor.submit(plan.oof_job(options)), "the OOF job")
        after = f", starts when array {array_id} has succeeded (afterok)" if array_id else ""
        report(f"  OOF search: {log_line(oof)}{after}")
    report(
        f"logs: {plan.logs_dir}/<job id>/<job id>_0_log.out and .err; a preempted or timed-out job is requeued "
        "and continues from its last.ckpt; after a failure, the same command again continues every unfinished run"
    )
    if not wait:
        return
    for run, job in zip(runs, jobs):
        result, problem = job_outcome(job)
        report(
            f"  {run.label}: failed ({log_line(job)}): {problem}"
            if problem
            else finished_line(run.label, result)
        )
    if oof is not None:
        result, problem = job_outcome(oof)
        if problem:
            raise PipelineError(f"the OOF search failed ({log_line(oof)}): {problem}")
        report(result["text"])
