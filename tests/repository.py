"""Where the repository and its debug configs are, for tests in any folder."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEBUG = CONFIGS / "debug.yaml"
DEBUG_GATE = CONFIGS / "debug_classifier.yaml"
ENSEMBLE = CONFIGS / "ensemble_debug.yaml"


def run_make(target: str, variables: dict[str, object], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``make TARGET`` as a user runs it, with ``VAR=value`` variables and more environment; ``-o``
    takes the venv as installed (the test's Python is)."""
    return subprocess.run(
        ["make", "--silent", "-o", ".venv/.installed", target, *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
