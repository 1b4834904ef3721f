"""A missing executor (sbatch, submitit) is one error line that says what to install."""

from __future__ import annotations

import sys

import pytest

from tests.cli_contract import assert_one_error_line, run_in_process


@pytest.mark.slow
def test_slurm_without_sbatch_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    outcome = run_in_process("sweep", "--config", tmp_path / "e.yaml", "--executor", "slurm")
    assert_one_error_line(outcome, "sbatch and srun not found on PATH", "apt-get install slurm-wlm")


@pytest.mark.slow
def test_missing_submitit_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    outcome = run_in_process("sweep", "--config", tmp_path / "e.yaml", "--executor", "local")
    assert_one_error_line(outcome, "needs submitit", "pip install -c constraints.txt submitit")
