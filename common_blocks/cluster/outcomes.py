"""What a submitted job ended with, read from submitit's files, and the lines that report it: the same
for the Slurm and the local executor."""

from __future__ import annotations

import re
import time
from typing import Any


def _last_line(text: str) -> str:
    """The line that says why a job failed: the last line of its traceback, without the module path."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    line = lines[-1] if lines else "failed"
    # "common_blocks.errors.DataError: ..." -> "DataError: ..."
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(\w+):", r"\1:", line)


def job_outcome(job: Any) -> tuple[Any, str | None]:
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


def log_line(job: Any) -> str:
    """Where to look for a submitted job: its id and its stderr log."""
    return f"job {job.job_id}, log {job.paths.stderr}"


def finished_line(label: str, result: dict[str, Any]) -> str:
    """The report line of a training job that succeeded: skipped as finished, or its score."""
    if result.get("skipped"):
        return f"  {label}: finished already, skipped"
    return f"  {label}: done, score {result['score']:.4f} ({result['epochs']} epochs)"
