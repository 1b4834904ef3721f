"""The package's shape: one command line listing every command, and import cost that matches the command."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from common_blocks.cli import COMMANDS
from tests.conftest import SEVERSTAL

HEAVY = ("torch", "lightning", "segmentation_models_pytorch", "timm", "torchmetrics")


def test_help_lists_every_command():
    result = subprocess.run([SEVERSTAL, "--help"], capture_output=True, text=True, check=True)
    listed = {
        line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ") and line.split()
    }
    assert set(COMMANDS) <= listed
    assert {
        "train",
        "infer",
        "oof",
        "score",
        "checkpoint",
        "report",
        "pseudo",
        "folds",
        "synthetic",
        "dataset",
    } <= set(COMMANDS)


def test_data_commands_and_the_evaluation_package_load_no_torch(tmp_path):
    """synthetic, folds and score run whole in a fresh interpreter, after importing every evaluation
    module, and none of the model stack is imported."""
    code = textwrap.dedent(
        f"""
        import sys
        import common_blocks.evaluation.metric, common_blocks.evaluation.scorer
        import common_blocks.evaluation.postprocess, common_blocks.evaluation.oof_stats
        import common_blocks.evaluation.threshold_search
        from common_blocks.cli import main
        data = {str(tmp_path)!r}
        main(["synthetic", "--out", data, "--n-train", "8", "--n-test", "4", "--workers", "1"])
        main(["folds", "--data-dir", data, "--n-folds", "2"])
        main(["score", "--submission", data + "/sample_submission.csv", "--truth", data + "/test_labels.csv",
              "--images", data + "/test_images", "--json"])
        print("loaded:", [name for name in {HEAVY!r} if name in sys.modules])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"score"' in result.stdout and (tmp_path / "folds.csv").is_file()
    assert result.stdout.strip().splitlines()[-1] == "loaded: []"
