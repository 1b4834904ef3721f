"""The command line's arguments: one parser listing every command, import cost that matches the
command, and the table of bad arguments (each one ``error:`` line, exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from common_blocks.cli import COMMANDS, main
from tests.cli_contract import SEVERSTAL, assert_one_error_line, run_in_process
from tests.repository import ROOT

HEAVY = ("torch", "lightning", "segmentation_models_pytorch", "timm", "torchmetrics")


@pytest.mark.subprocess
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
        "sweep",
        "export",
        "bundle",
        "weights",
    } <= set(COMMANDS)


@pytest.mark.subprocess
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trian"], "invalid choice: 'trian'"),
        ([], "required: COMMAND"),
        (["train", "--config", "c.yaml", "--fold", "-1"], "--fold: must be an integer >= 0, got -1"),
        (
            ["train", "--config", "c.yaml", "--fold", "0", "--resume", "--overwrite"],
            "not allowed with argument",
        ),
        (
            ["infer", "--config", "c.yaml", "--batch-size", "0"],
            "--batch-size: must be an integer >= 1, got 0",
        ),
        (["infer", "--config", "c.yaml", "--overlay", "o.png"], "--overlay and --truth need --image"),
        (["oof", "--config", "c.yaml", "--workers", "-1"], "--workers: must be an integer >= 0, got -1"),
        (["score", "--submission", "s.csv"], "required: --truth"),
        (["checkpoint", "--checkpoint", "nowhere.ckpt"], "nowhere.ckpt: checkpoint not found"),
        (["report", "--config", "c.yaml", "--out", "r", "--worst", "0"], "--worst: must be an integer >= 1"),
        (["pseudo", "--config", "c.yaml", "--round", "1", "--p-high", "2"], "--p-high: must lie in [0, 1]"),
        (["pseudo", "--config", "c.yaml", "--round", "0"], "--round: must be an integer >= 1"),
        (["pseudo", "--config", "c.yaml", "--round", "1", "--num-workers", "2"], "unrecognized arguments"),
        (["folds", "--data-dir", "d", "--n-folds", "1"], "--n-folds: must be an integer >= 2"),
        (["synthetic", "--out", "d", "--n-train", "x"], "--n-train: expected an integer, got 'x'"),
        (["synthetic", "--out", "d", "--n-weak", "-1"], "--n-weak: must be an integer >= 0, got -1"),
        (
            ["pseudo", "--config", "c.yaml", "--round", "1", "--unsure", "skip"],
            "--unsure: invalid choice: 'skip'",
        ),
        (
            ["dataset", "--data-dir", "d", "--out", "o", "--per-class", "0"],
            "--per-class: must be an integer >= 1",
        ),
        (["infer", "--config", "nowhere.yaml"], "nowhere.yaml: config file not found"),
        (["sweep", "--config", "c.yaml"], "required: --executor"),
        (["sweep", "--config", "c.yaml", "--executor", "pbs"], "invalid choice: 'pbs'"),
        (
            ["sweep", "--config", "c.yaml", "--executor", "slurm", "--timeout-min", "0"],
            "--timeout-min: must be",
        ),
        (
            ["sweep", "--config", "c.yaml", "--executor", "slurm", "--gpus-per-job", "-1"],
            "--gpus-per-job: must",
        ),
        (
            ["sweep", "--config", "c.yaml", "--executor", "slurm", "--array-parallelism", "x"],
            "expected an integer",
        ),
        (
            ["sweep", "--config", "c.yaml", "--executor", "slurm", "--slurm-option", "mem"],
            "expected KEY=VALUE",
        ),
        (
            ["sweep", "--config", "c.yaml", "--executor", "slurm", "--partition", ""],
            "--partition: expected a name",
        ),
        (
            ["sweep", "--config", "c.yaml", "--executor", "local", "--num-nodes", "2", "--partition", "gpu"],
            "--partition, --num-nodes: only with --executor slurm",
        ),
        (
            ["sweep", "--config", "c.yaml", "--executor", "local", "--pseudo", "p.csv"],
            "p.csv: file not found",
        ),
        (["sweep", "--config", "nowhere.yaml", "--executor", "local"], "nowhere.yaml: config file not found"),
        (["infer", "--config", "c.yaml", "--backend", "tensorrt"], "--backend: invalid choice: 'tensorrt'"),
        (
            ["sweep", "--config", "c.yaml", "--executor", "local", "--backend", "tensorrt"],
            "--backend: invalid choice: 'tensorrt'",
        ),
        (["oof", "--config", "c.yaml", "--precision", "fp8"], "--precision: invalid choice: 'fp8'"),
        (
            ["infer", "--config", "c.yaml", "--backend", "openvino", "--precision", "fp16"],
            "--backend openvino runs fp32 and bf16 only, not --precision fp16; use --backend torch for fp16",
        ),
        (
            ["oof", "--config", "c.yaml", "--backend", "onnxruntime", "--precision", "bf16"],
            "--backend onnxruntime runs fp32 only, not --precision bf16",
        ),
        (
            ["pseudo", "--config", "c.yaml", "--round", "1", "--exported", "e"],
            "--exported: the torch backend runs the checkpoints",
        ),
        (["infer", "--config", "c.yaml", "--backend", "openvino", "--exported", "e"], "e: no such folder"),
        (["export", "--config", "c.yaml"], "required: --out"),
        (["export", "--config", "nowhere.yaml", "--out", "e"], "nowhere.yaml: config file not found"),
        (["export", "--config", "c.yaml", "--out", ""], "--out: expected a path, got an empty string"),
        (["bundle", "--config", "c.yaml"], "required: --out"),
        (["bundle", "--config", "nowhere.yaml", "--out", "b"], "nowhere.yaml: config file not found"),
        (["bundle", "--config", "c.yaml", "--out", "."], ".: is the working directory or holds it"),
        (
            ["bundle", "--config", "c.yaml", "--out", "b", "--wheels-from", "w", "--no-dependency-wheels"],
            "not allowed with argument",
        ),
        (
            ["bundle", "--config", "c.yaml", "--out", "b", "--wheels-from", "w"],
            "w: no such folder (--wheels-from)",
        ),
        (
            ["bundle", "--config", "c.yaml", "--out", "b", "--kaggle-dataset", "my data"],
            "--kaggle-dataset: 'my data' is no Kaggle dataset name",
        ),
        (["export", "--config", "c.yaml", "--out", "."], ".: is the working directory or holds it"),
        (["weights"], "the following arguments are required: ACTION"),
        (["weights", "unpack"], "invalid choice: 'unpack'"),
        (["weights", "convert", "w.pth", "--out", "o.pth"], "required: --encoder"),
        (["weights", "convert", "w.pth", "--encoder", "resnet18"], "required: --out"),
        (["weights", "convert", "w.pth", "--encoder", "resnet18", "--out", ""], "--out: expected a path"),
        (
            ["weights", "convert", "w.pth", "--encoder", "resnet18", "--out", "o.pth"],
            "SOURCE: expected package:DIST or an existing weights file, got 'w.pth'",
        ),
        (
            ["weights", "convert", "package:no-such-weights", "--encoder", "resnet18", "--out", "o.pth"],
            "SOURCE: package:no-such-weights is not installed; pip install no-such-weights",
        ),
        (
            ["weights", "convert", "imagenet", "--encoder", "resnet18", "--out", "o.pth"],
            "SOURCE: expected package:DIST or an existing weights file, got 'imagenet'",
        ),
        (
            ["train", "--config", "c.yaml", "--fold", "0", "--init-from", "x.pt"],
            "--init-from x.pt: expected an existing .ckpt",
        ),
    ],
)
def test_bad_arguments_are_one_error_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("argv", "default"),
    [(["train", "--fold", "0"], "configs/fpn_se_resnext50.yaml"), (["infer"], "configs/ensemble.yaml")],
)
def test_train_and_infer_without_config_take_the_main_configs_and_say_so(
    argv, default, tmp_path, monkeypatch
):
    """``python train.py --fold K`` and ``python inference.py`` as promised: the main model family and
    the ensemble, named on stderr; in a folder without them, one line naming the file."""
    monkeypatch.chdir(tmp_path)
    outcome = run_in_process(*argv)
    assert f"config: {default} (the default; --config chooses another)" in outcome.stderr
    assert_one_error_line(outcome, f"{default}: config file not found")


def test_the_default_configs_load_from_the_repository(tmp_path, monkeypatch, offline):
    """From the repository root the defaults are read: a missing data folder is then the one line."""
    monkeypatch.chdir(ROOT)
    missing = tmp_path / "nowhere"
    outcome = run_in_process("infer", "--data-dir", missing, "--out", tmp_path / "submission.csv")
    assert "config: configs/ensemble.yaml (the default" in outcome.stderr
    assert_one_error_line(outcome, str(missing))
