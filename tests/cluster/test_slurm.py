"""The Slurm executor, against a stand-in ``sbatch``: one job array and the OOF search after it, each
stage after the one before."""

from __future__ import annotations

import pytest

from tests.cli_contract import run_in_process
from tests.cluster.sweeps import (
    QUICK,
    ensemble_file,
    second_stage,
    sets,
)


@pytest.mark.slow
def test_slurm_sweep_submits_one_array_and_the_oof_search_after_it(fake_slurm, synthetic_data):
    tmp_path = fake_slurm
    ensemble = ensemble_file(tmp_path, synthetic_data)
    outcome = run_in_process(
        "sweep", "--config", ensemble, "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "2",
        "--timeout-min", "60", "--slurm-option", "account=steel", *sets(*QUICK),
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr[-3000:]
    array, oof = (tmp_path / f"sbatch_{n}.sh" for n in (0, 1))
    script = array.read_text()
    for flag in (
        "--array=0-3%4",
        "--partition=gpu",
        "--gpus-per-node=2",
        "--ntasks-per-node=2",  # one DDP rank per GPU, as Lightning's SLURM environment expects
        "--nodes=1",
        "--time=60",
        "--signal=USR2@90",
        "--account=steel",
        "--job-name=ensemble-train",
    ):
        assert f"#SBATCH {flag}\n" in script, script
    assert "srun" in script and "submitit.core._submit" in script
    oof_script = oof.read_text()
    assert "#SBATCH --dependency=afterok:4200\n" in oof_script and "--array" not in oof_script
    for n in range(4):
        assert f"job 4200_{n}, log {tmp_path / 'runs' / 'sweep_logs' / f'4200_{n}'}" in outcome.stdout
    assert "OOF search: job 4201" in outcome.stdout and "afterok" in outcome.stdout
    two_nodes = run_in_process(
        "sweep", "--config", ensemble, "--executor", "slurm", "--num-nodes", "2", *sets(*QUICK)
    )  # fmt: skip
    assert two_nodes.code == 0, two_nodes.stderr[-3000:]
    assert "#SBATCH --nodes=2\n" in (tmp_path / "sbatch_2.sh").read_text()  # one DDP run across two nodes


@pytest.mark.slow
def test_slurm_sweep_submits_each_stage_after_the_one_before(fake_slurm, synthetic_data):
    tmp_path = fake_slurm
    ensemble = ensemble_file(
        tmp_path, synthetic_data, [{"config": str(second_stage(tmp_path)), "folds": [0, 1]}]
    )
    outcome = run_in_process("sweep", "--config", ensemble, "--executor", "slurm", *sets(*QUICK))
    assert outcome.code == 0, outcome.stderr[-3000:]
    first, second, oof = ((tmp_path / f"sbatch_{n}.sh").read_text() for n in (0, 1, 2))
    assert (
        "#SBATCH --array=0-3%4\n" in first and "--dependency" not in first
    )  # debug and the gate, 2 folds each
    assert "#SBATCH --array=0-1%2\n" in second and "#SBATCH --dependency=afterok:4200\n" in second
    assert "#SBATCH --dependency=afterok:4201\n" in oof
    assert "debug_full/fold1: start: job 4201_1" in outcome.stdout and "(after array 4200)" in outcome.stdout
