"""Whether a sweep can run here: submitit installed and, for Slurm, its commands on PATH. Imports nothing
heavy, so the command line checks it before loading any config or model."""

from __future__ import annotations

import importlib.util
import shutil

from common_blocks.errors import ConfigError

EXECUTORS = ("slurm", "local")
SUBMITIT_MISSING = (
    "severstal sweep needs submitit, which is not installed: pip install -c constraints.txt submitit "
    "(it is in requirements.txt)"
)


def check_executor(executor: str) -> None:
    """A ConfigError saying what to install when submitit is missing or, for ``slurm``, when ``sbatch``
    or ``srun`` is not on PATH."""
    try:
        found = importlib.util.find_spec("submitit") is not None
    except (ImportError, ValueError):  # a broken install, or a module set to None in sys.modules
        found = False
    if not found:
        raise ConfigError(SUBMITIT_MISSING)
    if executor == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(
                f"--executor slurm: {' and '.join(missing)} not found on PATH; run the sweep on a Slurm "
                "login node (or install Slurm: apt-get install slurm-wlm), or use --executor local"
            )
