"""The cluster tests' fixture: a stand-in Slurm on PATH."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` and ``srun`` stand-ins on PATH: sbatch keeps each script and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{tmp_path}"/sbatch_*.sh 2>/dev/null | wc -l)\n'
        f'cp "$1" "{tmp_path}/sbatch_$n.sh"\n'
        'echo "Submitted batch job $((4200 + n))"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path
