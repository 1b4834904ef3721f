"""Outputs appear whole or not at all, and an output path that cannot be written is one ``error:`` line,
found before any expensive work, with every file the user had left byte-identical.

Driven through the ``severstal`` commands over tables of bad inputs: mostly in process (cheap), a few
as subprocesses for the real exit status. The ensemble members are untrained debug checkpoints of
``conftest.py``. Running as root, a read-only folder is writable; there the tests make ``os.access``
answer for it as it would for a user.
"""

import errno
import importlib
import json
import math
import os
import pathlib
import shutil
from pathlib import Path

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from common_blocks.evaluation.metric import ScoreSummary
from common_blocks.run_folder import RunPaths
from tests.cli_contract import assert_one_error_line, assert_unchanged, run, run_in_process, snapshot
from tests.debug_runs import debug_ensemble_file, write_untrained
from tests.repository import DEBUG, DEBUG_GATE

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, runs, data):
    """A folder holding what one successful ``severstal oof`` wrote: thresholds.json, oof.npz,
    leaderboard.csv."""
    folder = tmp_path_factory.mktemp("tuned")
    outcome = run_in_process("oof", "--config", debug_ensemble_file(folder, runs, data), "--workers", 0)
    assert outcome.code == 0, outcome.stderr
    return folder


OOF_OUTPUTS = ("thresholds.json", "oof.npz", "leaderboard.csv")


def with_oof_outputs(folder: Path, tuned: Path, runs: Path, data: Path, **keys) -> Path:
    """``folder`` with copies of an earlier run's OOF outputs and an ensemble config writing there."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in OOF_OUTPUTS:
        shutil.copy(tuned / name, folder / name)
    return debug_ensemble_file(folder, runs, data, **keys)


def names(folder: Path) -> list[str]:
    """Every path below ``folder``: no temporary, staging folder or backup may be left behind."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


EXPENSIVE = (
    ("common_blocks.inference.predictor", "build_predictor"),
    ("common_blocks.inference.oof_search", "build_predictor"),
    ("common_blocks.reports.oof_report", "ensemble_report"),
    ("common_blocks.reports.dataset_overview", "dataset_overview"),
    ("common_blocks.training.runner", "train_fold"),
    ("common_blocks.pseudo.rounds", "pseudo_label_round"),
    ("common_blocks.data.synthetic", "generate"),
)


@pytest.fixture
def no_work(monkeypatch):
    """Loading models, training, predicting or rendering fails the test: the error must come first."""

    def started(*args, **kwargs):
        raise AssertionError("expensive work started before the bad input was reported")

    modules = [importlib.import_module(module) for module, _ in EXPENSIVE]  # all, before any patch
    for module, (_, name) in zip(modules, EXPENSIVE, strict=True):
        monkeypatch.setattr(module, name, started)


@pytest.fixture
def lock(monkeypatch):
    """``lock(folder)`` makes ``folder`` read-only (for root too, as far as ``os.access`` tells)."""
    locked: list[Path] = []
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and any(Path(path).absolute().is_relative_to(f) for f in locked):
            return False
        return real_access(path, mode, *args, **kwargs)

    def make_read_only(folder: Path) -> Path:
        folder.chmod(0o555)
        locked.append(folder.absolute())
        if os.geteuid() == 0:  # root may write anywhere
            monkeypatch.setattr(os, "access", access)
        return folder

    yield make_read_only
    for folder in locked:
        folder.chmod(0o755)


# --- 7: output paths that cannot be written, found before any work ---------------------------------


class Context:
    def __init__(self, tmp: Path, runs: Path, data: Path) -> None:
        self.tmp, self.data = tmp, data
        self.yaml = debug_ensemble_file(tmp / "config", runs, data)
        self.image = sorted((data / "test_images").iterdir())[0]


FILE_OUTPUTS = {
    "infer --out": lambda c, p: ["infer", "--config", c.yaml, "--workers", 0, "--out", p],
    "infer --overlay": lambda c, p: ["infer", "--config", c.yaml, "--image", c.image, "--overlay", p],
    "folds --out": lambda c, p: ["folds", "--data-dir", c.data, "--out", p],
    "weights convert --out": lambda c, p: [
        "weights",
        "convert",
        c.tmp / "w.pth",
        "--encoder",
        "resnet18",
        "--out",
        p,
    ],
}
FOLDER_OUTPUTS = {
    "train --out-dir": lambda c, p: [
        "train",
        "--config",
        DEBUG,
        "--fold",
        0,
        "--data-dir",
        c.data,
        "--out-dir",
        p,
    ],
    "report --out": lambda c, p: ["report", "--config", c.yaml, "--out", p],
    "synthetic --out": lambda c, p: ["synthetic", "--out", p, "--n-train", 1, "--n-test", 1],
    "dataset --out": lambda c, p: ["dataset", "--data-dir", c.data, "--out", p],
    "pseudo --out-dir": lambda c, p: ["pseudo", "--config", c.yaml, "--round", 1, "--out-dir", p],
    "export --out": lambda c, p: ["export", "--config", c.yaml, "--out", p],
    "bundle --out": lambda c, p: ["bundle", "--config", c.yaml, "--out", p, "--no-dependency-wheels"],
}


def bad_path(tmp: Path, kind: str, lock) -> Path | str:
    """An output path of the given kind of trouble, with a file the command must leave alone."""
    if kind == "empty":
        return ""
    if kind == "a folder":
        (tmp / "taken").mkdir()
        (tmp / "taken" / "keep.txt").write_text("the user's file\n")
        return tmp / "taken"
    if kind == "a file":
        (tmp / "taken").write_text("the user's file\n")
        return tmp / "taken"
    if kind == "under a file":
        (tmp / "plain.txt").write_text("the user's file\n")
        return tmp / "plain.txt" / "out"
    if kind == "a fifo":
        os.mkfifo(tmp / "pipe")
        return tmp / "pipe"
    assert kind == "in a read-only folder"
    (tmp / "locked").mkdir()
    (tmp / "locked" / "keep.txt").write_text("the user's file\n")
    lock(tmp / "locked")
    return tmp / "locked" / "new" / "out"


CASES = [
    *(
        (command, kind)
        for command in FILE_OUTPUTS
        for kind in ("a folder", "under a file", "in a read-only folder", "empty")
    ),
    ("infer --out", "a fifo"),
    ("folds --out", "a fifo"),
    *(
        (command, kind)
        for command in FOLDER_OUTPUTS
        for kind in ("a file", "under a file", "in a read-only folder", "empty")
    ),
]


@pytest.mark.parametrize(("command", "kind"), CASES, ids=[f"{c}: {k}" for c, k in CASES])
def test_an_output_path_that_cannot_be_written_is_one_line_before_any_work(
    tmp_path, runs, data, no_work, lock, command, kind
):
    context = Context(tmp_path, runs, data)
    path = bad_path(tmp_path, kind, lock)
    args = {**FILE_OUTPUTS, **FOLDER_OUTPUTS}[command](context, path)
    before, listed = snapshot(tmp_path, data), names(tmp_path)
    outcome = run_in_process(*args)
    assert_one_error_line(outcome, command.split()[-1] if kind == "empty" else str(path))
    assert_unchanged(before, tmp_path, data)
    assert names(tmp_path) == listed


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("command", "kind"),
    [("folds --out", "a folder"), ("synthetic --out", "under a file"), ("infer --out", "empty")],
)
def test_a_bad_output_path_exits_2_without_a_traceback(tmp_path, runs, data, command, kind):
    context = Context(tmp_path, runs, data)
    path = bad_path(tmp_path, kind, lock=None)
    before = snapshot(tmp_path, data)
    outcome = run(*{**FILE_OUTPUTS, **FOLDER_OUTPUTS}[command](context, path))
    assert_one_error_line(outcome, command.split()[-1] if kind == "empty" else str(path))
    assert_unchanged(before, tmp_path, data)


# --- 1: an output is never an input of its run, nor inside an input folder ----------------------------


class Reads(Context):
    """What the commands read, for the walk below: the debug ensemble over copies of its training
    configs (a wrong write could only spoil a copy), the --image and a --truth beside the data, a
    weights file, an export to read, and a link to a run folder (another spelling of its paths)."""

    def __init__(self, tmp: Path, runs: Path, data: Path) -> None:
        super().__init__(tmp, runs, data)
        self.runs = runs
        (tmp / "configs").mkdir()
        self.training = Path(shutil.copy(DEBUG, tmp / "configs"))
        self.gate_training = Path(shutil.copy(DEBUG_GATE, tmp / "configs"))
        self.yaml = debug_ensemble_file(
            tmp / "config",
            runs,
            data,
            members=[{"config": str(self.training), "folds": [0, 1]}],
            gate={"config": str(self.gate_training), "folds": [0, 1]},
        )
        self.thresholds = tmp / "config" / "thresholds.json"
        self.checkpoint = RunPaths.of(runs, "debug", 0).best
        self.gate_checkpoint = RunPaths.of(runs, "debug_classifier", 1).best
        self.link = tmp / "link"
        self.link.symlink_to(self.checkpoint.parent, target_is_directory=True)
        self.other_image = sorted((data / "test_images").iterdir())[1]
        self.truth = Path(shutil.copy(data / "train.csv", tmp / "truth.csv"))
        self.weights = tmp / "w.pth"
        self.weights.write_bytes(b"the user's weights")
        self.export = tmp / "export"
        self.export.mkdir()
        (self.export / "manifest.json").write_text("{}")


def _oof(key: str):
    return lambda c, p: ["oof", "--config", c.yaml, "--workers", 0, "--set", f"{key}={json.dumps(str(p))}"]


EXPORTED = ("--backend", "onnxruntime", "--exported")
# Each command's output option: the arguments that write to the path ``p``.
WRITES = {
    "infer --out": lambda c, p: ["infer", "--config", c.yaml, "--workers", 0, "--out", p],
    "infer --out --exported": lambda c, p: ["infer", "--config", c.yaml, "--out", p, *EXPORTED, c.export],
    "infer --overlay": lambda c, p: [
        *("infer", "--config", c.yaml, "--image", c.image, "--truth", c.truth, "--overlay", p)
    ],
    "oof thresholds_file": _oof("postprocess.thresholds_file"),
    "oof leaderboard": _oof("leaderboard"),
    "pseudo --out-dir": lambda c, p: ["pseudo", "--config", c.yaml, "--round", 1, "--out-dir", p],
    "pseudo --out-dir --exported": lambda c, p: [
        *("pseudo", "--config", c.yaml, "--round", 1, "--out-dir", p, *EXPORTED, c.export)
    ],
    "report --out": lambda c, p: ["report", "--config", c.yaml, "--out", p],
    "folds --out": lambda c, p: ["folds", "--data-dir", c.data, "--out", p],
    "dataset --out": lambda c, p: ["dataset", "--data-dir", c.data, "--out", p],
    "weights convert --out": lambda c, p: [
        *("weights", "convert", c.weights, "--encoder", "resnet18", "--out", p)
    ],
    "train --out-dir": lambda c, p: [
        *("train", "--config", c.training, "--fold", 0, "--data-dir", c.data, "--out-dir", p)
    ],
    "sweep --out-dir": lambda c, p: ["sweep", "--config", c.yaml, "--executor", "local", "--out-dir", p],
}
# The inputs of an ensemble's run, each as (an output path that is, or lies inside, it; what the
# one error line says of it). Also spelled through a link, with ``..`` and relative to the cwd.
ENSEMBLE_FILES = {
    "the ensemble config": lambda c: (c.yaml, f"is the ensemble config {c.yaml}"),
    "the ensemble config as a relative path": lambda c: (
        Path(os.path.relpath(c.yaml)),
        f"is the ensemble config {c.yaml}",
    ),
    "the ensemble config through ..": lambda c: (
        c.tmp / "configs" / ".." / "config" / c.yaml.name,
        f"is the ensemble config {c.yaml}",
    ),
    "a training config": lambda c: (c.training, f"is the training config {c.training}"),
    "the gate's training config": lambda c: (c.gate_training, f"is the training config {c.gate_training}"),
    "a checkpoint": lambda c: (c.checkpoint, f"is the checkpoint {c.checkpoint}"),
    "a checkpoint through a link": lambda c: (c.link / "best.ckpt", f"is the checkpoint {c.checkpoint}"),
    "the gate's checkpoint": lambda c: (c.gate_checkpoint, f"is the checkpoint {c.gate_checkpoint}"),
    "a new file in a run folder": lambda c: (
        c.link / "new.csv",
        f"lies inside the run folder {c.checkpoint.parent}",
    ),
    "a test image": lambda c: (c.other_image, f"lies inside the ensemble's data_dir {c.data}"),
    "the sample submission": lambda c: (
        c.data / "sample_submission.csv",
        f"lies inside the ensemble's data_dir {c.data}",
    ),
    "the labels": lambda c: (c.data / "train.csv", f"lies inside the ensemble's data_dir {c.data}"),
    "a new file in the data": lambda c: (c.data / "new.csv", f"lies inside the ensemble's data_dir {c.data}"),
}
TUNED = {
    "the tuned thresholds": lambda c: (
        c.thresholds,
        f"is the tuned thresholds (postprocess.thresholds_file) {c.thresholds}",
    ),
}
EXPORT = {
    "the export's manifest": lambda c: (
        c.export / "manifest.json",
        f"lies inside the export it reads (--exported) {c.export}",
    ),
}
ENSEMBLE_FOLDERS = {
    "the data": lambda c: (c.data, f"is the ensemble's data_dir {c.data}"),
    "a folder in the data": lambda c: (c.data / "new", f"lies inside the ensemble's data_dir {c.data}"),
    "the runs": lambda c: (c.runs, f"is the ensemble's runs_dir {c.runs}"),
    "a run folder": lambda c: (c.link, f"is the run folder {c.checkpoint.parent}"),
    "a folder in the runs": lambda c: (c.runs / "new", f"lies inside the ensemble's runs_dir {c.runs}"),
    "the config's folder": lambda c: (c.yaml.parent, f"holds the ensemble config {c.yaml}"),
    "the training configs' folder": lambda c: (
        c.training.parent,
        f"is the folder of the training configs {c.training.parent}",
    ),
}
READS = {
    "infer --out": {**ENSEMBLE_FILES, **TUNED},
    "infer --out --exported": EXPORT,
    "infer --overlay": {
        "the --image": lambda c: (c.image, f"is the image (--image) {c.image}"),
        "the --truth": lambda c: (c.truth, f"is the labels (--truth) {c.truth}"),
        **ENSEMBLE_FILES,
        **TUNED,
    },
    "oof thresholds_file": ENSEMBLE_FILES,
    "oof leaderboard": ENSEMBLE_FILES,
    "pseudo --out-dir": ENSEMBLE_FOLDERS,
    "pseudo --out-dir --exported": {
        "the export": lambda c: (c.export, f"is the export it reads (--exported) {c.export}"),
        "a folder in the export": lambda c: (
            c.export / "pseudo",
            f"lies inside the export it reads (--exported) {c.export}",
        ),
    },
    "report --out": ENSEMBLE_FOLDERS,
    "folds --out": {
        "the labels": lambda c: (c.data / "train.csv", f"is the labels {c.data / 'train.csv'}"),
        "the images": lambda c: (
            c.data / "train_images" / "new.csv",
            f"lies inside the image folder {c.data / 'train_images'}",
        ),
    },
    "dataset --out": {
        "the data": lambda c: (c.data, f"is the data folder (--data-dir) {c.data}"),
        "a folder in the data": lambda c: (
            c.data / "train_images" / "overview",
            f"lies inside the data folder (--data-dir) {c.data}",
        ),
    },
    "weights convert --out": {
        "SOURCE": lambda c: (c.weights, f"is the weights it reads (SOURCE) {c.weights}"),
        "SOURCE through ..": lambda c: (
            c.tmp / "config" / ".." / c.weights.name,
            f"is the weights it reads (SOURCE) {c.weights}",
        ),
    },
    "train --out-dir": {
        "a folder in the data": lambda c: (c.data / "runs", f"lies inside the data_dir {c.data}"),
    },
    "sweep --out-dir": {
        "a folder in the data": lambda c: (c.data / "runs", f"lies inside the data_dir {c.data}"),
    },
}
WALK = [(command, read) for command, reads in READS.items() for read in reads]


@pytest.mark.parametrize(("command", "read"), WALK, ids=[f"{c} over {r}" for c, r in WALK])
def test_an_output_is_never_an_input_nor_inside_one(tmp_path, runs, data, no_work, command, read):
    """Every command's output option over every input it reads, however spelled: one error line
    naming both, exit 2, before any work, and no file changed, added or removed."""
    context = Reads(tmp_path, runs, data)
    out, fragment = READS[command][read](context)
    before, listed = snapshot(tmp_path, data, runs), [names(root) for root in (tmp_path, data, runs)]
    line = assert_one_error_line(run_in_process(*WRITES[command](context, out)), f"{out}: ", fragment)
    assert "an input of this command" in line
    assert_unchanged(before, tmp_path, data, runs)
    assert [names(root) for root in (tmp_path, data, runs)] == listed


@pytest.mark.subprocess
def test_an_output_over_an_input_exits_2_without_a_traceback(tmp_path, runs, data):
    context = Reads(tmp_path, runs, data)
    before = snapshot(tmp_path, runs)
    outcome = run(*WRITES["infer --out"](context, context.checkpoint))
    assert_one_error_line(outcome, f"{context.checkpoint}: is the checkpoint {context.checkpoint}")
    assert_unchanged(before, tmp_path, runs)


def test_pseudo_round_files_that_are_folders_are_found_before_predicting(tmp_path, runs, data, no_work):
    context = Context(tmp_path, runs, data)
    (tmp_path / "pseudo" / "round1.csv").mkdir(parents=True)
    outcome = run_in_process(*FOLDER_OUTPUTS["pseudo --out-dir"](context, tmp_path / "pseudo"))
    assert_one_error_line(outcome, str(tmp_path / "pseudo" / "round1.csv"), "is a folder")


def test_train_run_folder_under_a_file_is_found_before_training(tmp_path, data, no_work):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "debug").write_text("not a folder\n")
    before = snapshot(tmp_path)
    outcome = run_in_process(
        *FOLDER_OUTPUTS["train --out-dir"](Context(tmp_path, tmp_path, data), tmp_path / "runs")
    )
    assert_one_error_line(outcome, str(tmp_path / "runs" / "debug"), "is a file")
    assert_unchanged(before, tmp_path)


# --- 7: a full disk -----------------------------------------------------------------------------------


def _fail(*args, **kwargs):
    raise FULL_DISK


def _report_folder(tmp: Path) -> Path:
    folder = tmp / "report"
    folder.mkdir()
    (folder / "index.html").write_text("<html>the earlier report</html>\n")
    (folder / "class_distribution.png").write_bytes(b"the earlier plot")
    return folder


FULL_DISK_CASES = {
    # command: (what fails to write, args from (context, tuned folder) -> (args, the output named))
    "folds": (
        (pd.DataFrame, "to_csv"),
        lambda c, t: (
            ["folds", "--data-dir", c.data, "--out", _old(c.tmp / "folds.csv")],
            c.tmp / "folds.csv",
        ),
    ),
    "infer": (
        (pd.DataFrame, "to_csv"),
        lambda c, t: (
            ["infer", "--config", c.yaml, "--workers", 0, "--out", _old(c.tmp / "sub.csv")],
            c.tmp / "sub.csv",
        ),
    ),
    "oof (the leaderboard, written last)": (
        (pd.DataFrame, "to_csv"),
        lambda c, t: (["oof", "--config", c.oof_yaml, "--workers", 0], c.tmp / "oof" / "leaderboard.csv"),
    ),
    "oof (the statistics, written first)": (
        (np, "savez_compressed"),
        lambda c, t: (["oof", "--config", c.oof_yaml, "--workers", 0], c.tmp / "oof" / "oof.npz"),
    ),
    "report": (
        (matplotlib.figure.Figure, "savefig"),
        lambda c, t: (
            ["report", "--config", c.oof_yaml, "--out", _report_folder(c.tmp), "--worst", 1],
            c.tmp / "report",
        ),
    ),
    "dataset": (
        (matplotlib.figure.Figure, "savefig"),
        lambda c, t: (["dataset", "--data-dir", c.data, "--out", _report_folder(c.tmp)], c.tmp / "report"),
    ),
    "synthetic": (
        (pd.DataFrame, "to_csv"),
        lambda c, t: (["synthetic", "--out", c.tmp / "set", "--n-train", 1, "--n-test", 1], c.tmp / "set"),
    ),
}


def _old(path: Path) -> Path:
    path.write_text("the earlier output\n")
    return path


@pytest.mark.parametrize("command", FULL_DISK_CASES)
def test_a_full_disk_is_one_line_naming_the_output_and_keeps_the_old_one(
    tmp_path, runs, data, tuned, monkeypatch, command
):
    (owner, name), make = FULL_DISK_CASES[command]
    context = Context(tmp_path, runs, data)
    context.oof_yaml = with_oof_outputs(tmp_path / "oof", tuned, runs, data)
    args, output = make(context, tuned)
    before, listed = snapshot(tmp_path, data), names(tmp_path)
    monkeypatch.setattr(owner, name, _fail)
    outcome = run_in_process(*args)
    assert_one_error_line(outcome, str(output), "No space left on device")
    assert_unchanged(before, tmp_path, data)
    assert names(tmp_path) == listed


def test_a_full_disk_outside_atomic_output_is_one_line_too(tmp_path, data, monkeypatch):
    """Training writes through Lightning as well; a full disk there still ends in one line."""
    checkpoint = tmp_path / "runs" / "debug" / "fold0" / "last.ckpt"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(checkpoint))

    monkeypatch.setattr(importlib.import_module("common_blocks.training.runner"), "train_fold", full)
    args = FOLDER_OUTPUTS["train --out-dir"](Context(tmp_path, tmp_path, data), tmp_path / "runs")
    assert_one_error_line(run_in_process(*args), str(checkpoint), "No space left on device")


def test_write_failures_that_are_bugs_are_not_hidden(tmp_path, data, monkeypatch):
    def bug(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "a path the code got wrong")

    monkeypatch.setattr(importlib.import_module("common_blocks.training.runner"), "train_fold", bug)
    with pytest.raises(FileNotFoundError):
        run_in_process(
            *FOLDER_OUTPUTS["train --out-dir"](Context(tmp_path, tmp_path, data), tmp_path / "runs")
        )

    from common_blocks.files import atomic_output

    folder = tmp_path / "atomic"
    folder.mkdir()
    with pytest.raises(FileNotFoundError), atomic_output(folder / "out.txt"):
        (folder / "no" / "such" / "input").read_text()
    assert names(folder) == []


# --- 3: oof writes its three outputs together or not at all --------------------------------------------


BAD_LEADERBOARDS = {
    "not text": lambda path: path.write_bytes(b"\xff\xfe\x00\x81 not a leaderboard\n"),
    "a foreign header": lambda path: path.write_text("player,points\nann,3\n"),
    "ragged rows": lambda path: path.write_text(path.read_text() + ",".join("abcdefghijklmnopqrst") + "\n"),
    "a folder": lambda path: (path.unlink(), path.mkdir(), (path / "keep.txt").write_text("x\n")),
}


@pytest.mark.parametrize("case", BAD_LEADERBOARDS)
def test_oof_with_a_bad_leaderboard_changes_nothing_and_predicts_nothing(
    tmp_path, runs, data, tuned, no_work, case
):
    config = with_oof_outputs(tmp_path, tuned, runs, data)
    BAD_LEADERBOARDS[case](tmp_path / "leaderboard.csv")
    before, listed = snapshot(tmp_path), names(tmp_path)
    outcome = run_in_process("oof", "--config", config, "--workers", 0)
    assert_one_error_line(outcome, str(tmp_path / "leaderboard.csv"))
    assert_unchanged(before, tmp_path)
    assert names(tmp_path) == listed


BAD_OOF_OUTPUTS = {
    "thresholds_file is a folder": ({"thresholds_file": "{tmp}/tuned"}, "{tmp}/tuned", "is a folder"),
    "thresholds_file under a file": (
        {"thresholds_file": "{tmp}/plain.txt/t.json"},
        "{tmp}/plain.txt",
        "is a file",
    ),
    "thresholds_file is the statistics": ({"thresholds_file": "{tmp}/oof.npz"}, "{tmp}/oof.npz", "both"),
}


@pytest.mark.parametrize("case", BAD_OOF_OUTPUTS)
def test_oof_checks_its_outputs_before_predicting(tmp_path, runs, data, tuned, no_work, case):
    keys, named, problem = BAD_OOF_OUTPUTS[case]
    config = with_oof_outputs(
        tmp_path, tuned, runs, data, postprocess={k: v.format(tmp=tmp_path) for k, v in keys.items()}
    )
    (tmp_path / "tuned").mkdir()
    (tmp_path / "plain.txt").write_text("the user's file\n")
    before, listed = snapshot(tmp_path), names(tmp_path)
    outcome = run_in_process("oof", "--config", config, "--workers", 0)
    assert_one_error_line(outcome, named.format(tmp=tmp_path), problem)
    assert_unchanged(before, tmp_path)
    assert names(tmp_path) == listed


@pytest.mark.parametrize("earlier", ["an earlier run's outputs", "no earlier outputs"])
def test_oof_puts_the_outputs_back_when_the_last_rename_fails(
    tmp_path, runs, data, tuned, monkeypatch, earlier
):
    """The leaderboard is renamed last; when that fails, the statistics and thresholds renamed before
    it get their old content back (or go again if they are new)."""
    if earlier == "no earlier outputs":
        config = debug_ensemble_file(tmp_path, runs, data)
    else:
        config = with_oof_outputs(tmp_path, tuned, runs, data)
    before, listed = snapshot(tmp_path), names(tmp_path)
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == "leaderboard.csv":
            raise OSError(errno.EIO, "Input/output error", str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    outcome = run_in_process("oof", "--config", config, "--workers", 0)
    assert_one_error_line(outcome, str(tmp_path / "leaderboard.csv"))
    assert_unchanged(before, tmp_path)
    assert names(tmp_path) == listed


# --- 18: checkpoints of different modes; a thresholds file that cannot be read -------------------------


@pytest.mark.slow
def test_members_of_different_modes_are_an_error_naming_their_checkpoints(tmp_path, runs, data):
    write_untrained(runs, DEBUG, 0, "mode=binary", "name=debug_binary")
    config = debug_ensemble_file(
        tmp_path,
        runs,
        data,
        members=[{"config": str(DEBUG), "folds": [0]}, {"config": "debug_binary", "folds": [0]}],
        gate={"config": str(DEBUG_GATE), "folds": [0]},
    )
    outcome = run_in_process("infer", "--config", config, "--workers", 0, "--out", tmp_path / "sub.csv")
    assert_one_error_line(
        outcome,
        "different modes (debug=multilabel, debug_binary=binary)",
        str(RunPaths.of(runs, "debug", 0).best),
        str(RunPaths.of(runs, "debug_binary", 0).best),
    )
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.slow
def test_folds_of_one_member_in_different_modes_are_an_error_naming_them(tmp_path, data):
    runs = tmp_path / "runs"
    write_untrained(runs, DEBUG, 0)
    write_untrained(runs, DEBUG, 1, "mode=binary")
    config = debug_ensemble_file(tmp_path, runs, data, gate=None)
    outcome = run_in_process("infer", "--config", config, "--workers", 0, "--out", tmp_path / "sub.csv")
    assert_one_error_line(
        outcome,
        "different modes",
        f"multilabel: {RunPaths.of(runs, 'debug', 0).best}",
        f"binary: {RunPaths.of(runs, 'debug', 1).best}",
    )


def test_an_explicit_thresholds_file_that_is_a_folder_is_an_error(tmp_path, runs, data, no_work):
    (tmp_path / "thresholds.json").mkdir()
    for command in ("infer", "pseudo"):
        args = ["--round", 1, "--out-dir", tmp_path / "pseudo"] if command == "pseudo" else []
        outcome = run_in_process(command, "--config", debug_ensemble_file(tmp_path, runs, data), *args)
        assert_one_error_line(outcome, str(tmp_path / "thresholds.json"), "not a file")
    assert names(tmp_path) == ["ensemble.yaml", "thresholds.json"]


def test_an_unreadable_thresholds_file_is_an_error(tmp_path, runs, data, tuned, no_work, monkeypatch):
    config = with_oof_outputs(tmp_path, tuned, runs, data)
    thresholds = tmp_path / "thresholds.json"
    for method in ("open", "read_text", "read_bytes"):  # however the file is read: root reads anything
        real = getattr(pathlib.Path, method)

        def refused(self, *args, real=real, **kwargs):
            if self == thresholds:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, method, refused)
    outcome = run_in_process("infer", "--config", config, "--out", tmp_path / "sub.csv")
    assert_one_error_line(outcome, str(thresholds), "Permission denied")


def test_an_absent_thresholds_file_is_still_the_default_post_processing(tmp_path, runs, data):
    from common_blocks.inference.ensemble_config import load_ensemble_config

    _, source = load_ensemble_config(debug_ensemble_file(tmp_path, runs, data)).resolved_postprocess()
    assert "default post-processing" in source and "not found" in source


# --- siblings: the inputs of infer --image, its overlay ---------------------------------------------------


INFER_IMAGE_INPUTS = {
    "--image not found": (lambda c: ["--image", c.tmp / "missing.jpg"], "missing.jpg"),
    "--image a folder": (lambda c: ["--image", c.data / "test_images"], "is a folder"),
    "--truth not found": (lambda c: ["--image", c.image, "--truth", c.tmp / "labels.csv"], "labels.csv"),
}


@pytest.mark.parametrize("case", INFER_IMAGE_INPUTS)
def test_infer_image_inputs_are_checked_before_the_models_load(tmp_path, runs, data, no_work, case):
    context = Context(tmp_path, runs, data)
    extra, fragment = INFER_IMAGE_INPUTS[case]
    outcome = run_in_process("infer", "--config", context.yaml, *extra(context))
    assert_one_error_line(outcome, fragment)


def test_an_overlay_into_a_missing_folder_is_written(tmp_path, runs, data):
    context = Context(tmp_path, runs, data)
    overlay = tmp_path / "new" / "deeper" / "overlay.png"
    outcome = run_in_process(
        "infer", "--config", context.yaml, "--image", context.image, "--overlay", overlay
    )
    assert outcome.code == 0, outcome.stderr
    assert overlay.read_bytes().startswith(b"\x89PNG")


# --- 16: report --worst ------------------------------------------------------------------------------------


@pytest.mark.parametrize("worst", ["-1", "0", "two"])
def test_report_worst_must_be_a_positive_count(tmp_path, runs, data, no_work, worst):
    config = debug_ensemble_file(tmp_path, runs, data)
    outcome = run_in_process("report", "--config", config, "--out", tmp_path / "report", "--worst", worst)
    assert_one_error_line(outcome, "--worst", worst)
    assert not (tmp_path / "report").exists()


@pytest.mark.subprocess
def test_report_worst_minus_one_exits_2_in_a_real_process(tmp_path, runs, data):
    config = debug_ensemble_file(tmp_path, runs, data)
    outcome = run("report", "--config", config, "--out", tmp_path / "report", "--worst", -1)
    assert_one_error_line(outcome, "--worst", "-1")
    assert not (tmp_path / "report").exists()


# --- 14: strict JSON ------------------------------------------------------------------------------------


def strict_load(text: str) -> dict:
    """``json.loads`` that refuses NaN and Infinity, as every JSON parser but Python's does."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_score_json_without_true_defects_is_strict(tmp_path, data):
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId,ClassId,EncodedPixels\n")
    outcome = run_in_process(
        "score",
        "--submission", data / "sample_submission.csv",
        "--truth", truth,
        "--images", data / "test_images",
        "--json",
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr
    result = strict_load(outcome.stdout)
    assert result["positive_dice"] is None and result["score"] == 1.0


NAN = float("nan")
NAN_SUMMARY = ScoreSummary(NAN, {"1": NAN, "2": 1.0, "3": 1.0, "4": 1.0}, NAN, 0, 0, 0)


class NanReport:
    def to_dict(self) -> dict:
        return {"score": NAN, "nested": {"x": np.float32("inf"), "n": np.int64(3)}, "list": [NAN, 1.0]}


JSON_COMMANDS = {
    "train": (
        "common_blocks.training.runner",
        "train_fold",
        lambda *a, **k: {
            "name": "debug",
            "fold": 0,
            "score": NAN,
            "positive_dice": math.inf,
            "best_checkpoint": "b",
        },
        lambda c: [
            "train",
            "--config",
            DEBUG,
            "--fold",
            0,
            "--data-dir",
            c.data,
            "--out-dir",
            c.tmp / "runs",
        ],
    ),
    "checkpoint": (
        "common_blocks.training.runner",
        "evaluate_checkpoint",
        lambda *a, **k: NAN_SUMMARY,
        lambda c: ["checkpoint", "--checkpoint", c.tmp / "best.ckpt", "--json"],
    ),
    "oof": (
        "common_blocks.inference.oof_search",
        "run_oof",
        lambda *a, **k: NanReport(),
        lambda c: ["oof", "--config", c.yaml, "--json"],
    ),
}


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_json_lines_have_null_for_nan(tmp_path, runs, data, monkeypatch, command):
    module, name, result, args = JSON_COMMANDS[command]
    monkeypatch.setattr(importlib.import_module(module), name, result)
    outcome = run_in_process(*args(Context(tmp_path, runs, data)))
    assert outcome.code == 0, outcome.stderr
    printed = strict_load(outcome.stdout.strip().splitlines()[-1])
    assert printed["score"] is None
    assert None in printed.values() or None in printed.get("per_class", {}).values()


def test_strict_json_replaces_every_non_finite_number(capsys):
    from common_blocks.strict_json import print_json, strict_json

    value = {"a": [NAN, {"b": -math.inf}], "c": np.float64(0.5), "d": True, "e": "NaN", "f": np.int32(2)}
    assert strict_json(value) == {"a": [None, {"b": None}], "c": 0.5, "d": True, "e": "NaN", "f": 2}
    print_json(value)
    assert strict_load(capsys.readouterr().out) == strict_json(value)
