"""Exported backends give the same answers: ``severstal export``, ``--backend``, ``--precision``, ``--exported``.

The debug ensemble of ``conftest.py`` (segmenter and gate, folds 0 and 1, at 32x200 inside the
network) is exported once; the submissions of OpenVINO and ONNX Runtime are scored against torch's
with the competition metric, bf16 against fp32 by the local CV of ``severstal oof``. Tests that need
an extra skip without it (``make`` installs both).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from common_blocks import backend_names, cli
from common_blocks.backend_names import BACKENDS, PRECISIONS, cpu_has_bf16
from common_blocks.data import rle
from common_blocks.data.formats import list_images
from common_blocks.deploy import backend_choice, export, onnx_runtimes
from common_blocks.deploy.backend_choice import choose_backend
from common_blocks.deploy.export import MANIFEST, TOLERANCE, open_export, sha256_of
from common_blocks.errors import ConfigError
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.evaluation.scorer import score_submission
from common_blocks.inference.ensemble_config import load_ensemble_config
from common_blocks.inference.predictor import AUTOCAST_DTYPES, build_predictor
from common_blocks.inference.submission import ReadTolerantDataset
from tests.cli_contract import (
    SEVERSTAL,
    assert_one_error_line,
    assert_unchanged,
    run,
    run_in_process,
    snapshot,
)
from tests.debug_runs import debug_ensemble_file, write_untrained
from tests.deploy.backend_cases import backend_cases, needs, needs_bf16
from tests.references import postprocess_image
from tests.repository import DEBUG

pytestmark = pytest.mark.slow  # every test here trains, loads or runs a model

RUNTIMES = ("openvino", "onnxruntime")
SAME_SUBMISSION = 0.999  # competition score of a backend's submission with torch's as the truth
CV_MOVE = 0.002  # the most bf16 may move the local CV
TTA = ["none", "hflip"]  # the exported ensemble's TTA: the flipped copy is predicted too


@pytest.fixture(scope="module")
def config(tmp_path_factory, runs, data) -> Path:
    return debug_ensemble_file(tmp_path_factory.mktemp("ensemble"), runs, data, tta=TTA)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, config) -> Path:
    """The folder ``severstal export`` wrote for the debug ensemble (checked under every runtime installed)."""
    if not any(importlib.util.find_spec(name) for name in RUNTIMES):
        pytest.skip("neither openvino nor onnxruntime is installed")
    folder = tmp_path_factory.mktemp("export") / "onnx"
    outcome = run_in_process("export", "--config", config, "--out", folder)
    assert outcome.code == 0, outcome.stderr
    assert f"wrote {folder}: 4 network(s)" in outcome.stdout
    return folder


@pytest.fixture(scope="module")
def torch_submission(tmp_path_factory, config) -> Path:
    """torch's submission, in the 2019 format (four rows per image), to score the others against."""
    out = tmp_path_factory.mktemp("torch") / "submission.csv"
    outcome = run_in_process("infer", "--config", config, "--out", out, "--format", "2019", "--workers", 0)
    assert outcome.code == 0, outcome.stderr
    return out


def test_every_backend_and_precision_has_its_implementation():
    """backend_names is the one table: each runtime's compiler imports, its ranks order ``auto``, its
    precisions are known ones, and autocast knows each precision."""
    table = backend_names.RUNTIMES
    assert ("auto", "torch", *table) == BACKENDS and set(AUTOCAST_DTYPES) == set(PRECISIONS)
    for name, runtime in table.items():
        assert callable(onnx_runtimes.compiler(name)) and set(runtime.precisions) <= set(PRECISIONS)
    assert len({runtime.rank for runtime in table.values()}) == len(table)
    options = {action.dest: action.choices for action in cli.build_parser(commands=["infer"])._actions}
    assert tuple(options["backend"]) == BACKENDS and tuple(options["precision"]) == PRECISIONS


# --- export --------------------------------------------------------------------------------------


def test_export_writes_every_network_and_a_manifest_whose_checksums_match(exported, config, runs):
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["format"] == export.FORMAT and manifest["opset"] >= 17
    assert manifest["input"]["kind"] == "RGB" and manifest["input"]["shape"] == [3, 256, 1600]
    assert manifest["tta"] == ["none", "hflip"] and manifest["mode"] == "multilabel"
    assert (
        manifest["postprocess"]["classes"][0]["threshold"] == 0.5
        and "default" in manifest["postprocess_source"]
    )
    networks = manifest["networks"]
    assert sorted((n["role"], n["run"], n["fold"]) for n in networks) == [
        ("gate", "debug_classifier", 0),
        ("gate", "debug_classifier", 1),
        ("member", "debug", 0),
        ("member", "debug", 1),
    ]
    assert {n["file"] for n in networks} == {
        f"{run}/fold{k}/best.onnx" for run in ("debug", "debug_classifier") for k in (0, 1)
    }
    for network in networks:
        assert network["weight"] == (0.5 if network["role"] == "member" else 1.0)
        assert network["sha256"] == hashlib.sha256((exported / network["file"]).read_bytes()).hexdigest()
        assert network["checkpoint_sha256"] == sha256_of(Path(network["checkpoint"]))
        assert Path(network["checkpoint"]).is_relative_to(runs)
        installed = [name for name in RUNTIMES if importlib.util.find_spec(name)]
        assert sorted(network["largest_difference"]) == sorted(installed)
        assert all(0 <= value <= TOLERANCE for value in network["largest_difference"].values())
    assert not [p for p in exported.parent.iterdir() if p.name != exported.name]  # no staging left
    assert open_export(exported).manifest == manifest


def test_a_network_that_differs_from_pytorch_fails_the_export_naming_it_and_writes_nothing(
    tmp_path, config, monkeypatch, exported
):
    before = snapshot(exported)
    calls = []

    def off_on_the_third(model, path, runtime, images):
        calls.append(path)
        return 0.5 if len(calls) == 3 else 0.0

    monkeypatch.setattr(export, "largest_difference", off_on_the_third)
    for out in (tmp_path / "new", exported):  # a new folder is not created; an earlier export stays as it was
        calls.clear()
        outcome = run_in_process("export", "--config", config, "--out", out, "--overwrite")
        line = assert_one_error_line(outcome, "differs from PyTorch by 0.5 in probability", "tolerance 0.001")
        assert "fold" in line and ".ckpt" in line and "nothing exported" in line
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert_unchanged(before, exported)


def test_export_replaces_only_an_earlier_export_and_as_a_whole(tmp_path, config, data, exported):
    """A folder of the user's (its own manifest.json) is refused with or without --overwrite, as is the
    ensemble's test_images/; an earlier export is replaced whole, leaving none of its files behind."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / MANIFEST).write_text('{"my": "notes"}')
    images = data / "test_images"
    before = snapshot(mine, images)
    assert_one_error_line(run_in_process("export", "--config", config, "--out", mine), "is not empty")
    outcome = run_in_process("export", "--config", config, "--out", mine, "--overwrite")
    assert_one_error_line(outcome, f"{mine}: is not an export this pipeline wrote")
    outcome = run_in_process("export", "--config", config, "--out", images, "--overwrite")
    assert_one_error_line(outcome, f"{images}: is not an export this pipeline wrote")
    outcome = run_in_process("export", "--config", config, "--out", images / "onnx")
    assert_one_error_line(outcome, f"{images / 'onnx'}: lies inside the ensemble's data_dir")
    assert_unchanged(before, mine, images)
    assert snapshot(mine, images).keys() == before.keys()
    earlier = Path(shutil.copytree(exported, tmp_path / "onnx"))
    stray = earlier / "another_ensemble" / "fold0" / "best.onnx"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"an earlier ensemble's network")
    outcome = run_in_process("export", "--config", config, "--out", earlier, "--overwrite")
    assert outcome.code == 0, outcome.stderr
    assert not (earlier / "another_ensemble").exists()
    assert (
        open_export(earlier).manifest["networks"] == json.loads((exported / MANIFEST).read_text())["networks"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "onnx"]  # nothing set aside or staged


def test_a_network_the_exporter_cannot_trace_is_one_error_line_naming_it(tmp_path, config, monkeypatch):
    def unsupported(module, path):
        raise torch.onnx.errors.OnnxExporterError("Unsupported: ONNX export of operator frobnicate")

    monkeypatch.setattr(export, "export_network", unsupported)
    outcome = run_in_process("export", "--config", config, "--out", tmp_path / "onnx")
    assert_one_error_line(outcome, "cannot export the member debug fold 0 to ONNX", "best.ckpt")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.subprocess
def test_export_bad_input_is_one_error_line_in_a_real_process(tmp_path, config):
    (tmp_path / "file").write_text("")
    outcome = run("export", "--config", config, "--out", tmp_path / "file")
    assert_one_error_line(outcome, f"{tmp_path / 'file'}: is a file")
    outcome = run("export", "--config", config, "--set", "tta=[sideways]", "--out", tmp_path / "onnx")
    assert_one_error_line(outcome, "tta")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- same answers --------------------------------------------------------------------------------


def infer(config: Path, out: Path, *args: object):
    return run_in_process("infer", "--config", config, "--out", out, "--workers", 0, *args)


@pytest.mark.parametrize(
    ("backend", "precision", "from_export", "least"),
    [
        # each runtime from the export; the untrained maps lie near the threshold everywhere, the worst
        # case for bf16 (0.989 here)
        *(
            pytest.param(
                backend, precision, True, SAME_SUBMISSION if precision == "fp32" else 0.95, marks=mark
            )
            for backend, precision, mark in backend_cases(with_torch=False)
        ),
        # and exported on the fly
        pytest.param("openvino", "fp32", False, SAME_SUBMISSION, marks=needs("openvino", "onnx")),
    ],
)
def test_exported_backends_submit_what_torch_submits(
    backend, precision, from_export, least, exported, config, torch_submission, tmp_path, monkeypatch
):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where an export on the fly goes
    out = tmp_path / "submission.csv"
    source = ["--exported", exported] if from_export else []
    outcome = infer(config, out, "--backend", backend, "--precision", precision, *source)
    assert outcome.code == 0, outcome.stderr
    assert ("exported 4 network(s) for openvino" in outcome.stderr) != from_export
    assert not list(temporary.iterdir())  # the export on the fly is removed
    assert score_submission(out, torch_submission).score >= least


@pytest.mark.subprocess
@needs("onnxruntime")
def test_a_submission_from_an_export_loads_no_lightning(exported, config, torch_submission, tmp_path):
    """``severstal infer --exported`` in a fresh interpreter, its imports listed by ``-X importtime``:
    the plain networks predict, and neither Lightning nor torchmetrics is loaded."""
    out = tmp_path / "submission.csv"
    command = [sys.executable, "-X", "importtime", SEVERSTAL, "infer", "--config", config, "--out", out]
    command += ["--workers", "0", "--format", "2019", "--backend", "onnxruntime", "--exported", exported]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {
        line.rpartition("|")[2].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert {"torch", "common_blocks.inference.predictor"} <= imported
    assert not sorted(m for m in imported if m.startswith(("lightning", "pytorch_lightning", "torchmetrics")))
    assert score_submission(out, torch_submission).score >= SAME_SUBMISSION


@pytest.mark.parametrize(
    ("backend", "precision"), [pytest.param(*case, marks=mark) for *case, mark in backend_cases()]
)
def test_predictions_skip_planes_below_threshold_and_equal_the_full_maps_bit_for_bit(
    backend, precision, exported, config, data
):
    """``predict`` resizes and post-processes only the planes whose bound reaches the threshold; its
    masks are those of post-processing every full-resolution map, on every backend."""
    cfg = load_ensemble_config(config)
    runtime = (
        None if backend == "torch" else backend_choice.ExportedRuntime(backend, lambda: open_export(exported))
    )
    dataset = ReadTolerantDataset(
        pd.DataFrame({"ImageId": list_images(data / "test_images")[:6]}),
        data / "test_images",
        with_masks=False,
    )
    images = torch.stack([item["image"] for item in dataset])
    probe = build_predictor(cfg, device="cpu", precision=precision, runtime=runtime)
    probs = probe.probabilities(images).numpy()
    # per class, a threshold just under the median plane's maximum: that plane keeps a pixel or a few
    # (its bound is barely above the threshold), the planes below it cannot hold a defect
    maxima = np.sort(probs.max(axis=(-2, -1)), axis=0)
    post = PostprocessConfig(
        classes=tuple(
            ClassPostprocess(threshold=float(maxima[len(maxima) // 2, k]) - 1e-6, fill_holes=k == 1)
            for k in range(4)
        )
    )
    predictor = build_predictor(cfg, postprocess=post, device="cpu", precision=precision, runtime=runtime)
    gate_probs = predictor.gate_probabilities(images)
    expected = [
        tuple(rle.encode(mask) for mask in postprocess_image(prob, post, gate))
        for prob, gate in zip(probs, gate_probs, strict=True)
    ]
    assert predictor.resizes_planes and predictor.predict(images) == expected
    _, masks = predictor.masks(images)
    assert 0 < len(masks) < probs.shape[0] * 4  # planes were skipped, and planes were computed
    assert any(any(row) for row in expected)


@needs("openvino", "onnxruntime")
def test_auto_picks_the_fastest_installed_and_says_which(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_backend("auto", "fp32") == "openvino"
    assert (
        capsys.readouterr().err
        == "backend: openvino (--backend auto: the fastest installed for fp32 on this CPU)\n"
    )
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert choose_backend("auto", "fp32") == "onnxruntime"
    monkeypatch.setattr(backend_names, "cpu_has_bf16", lambda: True)
    assert choose_backend("auto", "bf16") == "torch"  # onnxruntime runs fp32 only
    assert "no ONNX runtime for bf16 is installed" in capsys.readouterr().err


def oof(config: Path, folder: Path, *args: object) -> float:
    """The local CV of ``severstal oof``, its outputs in ``folder``."""
    outcome = run_in_process(
        "oof",
        "--config", config,
        "--set", f"postprocess.thresholds_file={folder / 'thresholds.json'}",
        "--set", f"leaderboard={folder / 'leaderboard.csv'}",
        "--workers", 0,
        "--json",
        *args,
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr
    return json.loads(outcome.stdout.strip().splitlines()[-1])["score"]


# Post-processing that predicts every pair non-empty (threshold 0.5, nothing dropped): the untrained
# ensemble's tuned choice is all-empty, whose CV no network output can move; this one follows pixels.
EVERY_PAIR = ("search.thresholds=[0.5]", "search.min_sizes=[0]", "search.min_areas=[0]", "search.gates=[0.0]")
GRIDS = {"tuned": (), "every pair predicted": EVERY_PAIR}


@pytest.fixture(scope="module")
def fp32_cv(config, tmp_path_factory) -> dict[str, float]:
    """torch fp32's local CV under each grid."""
    return {
        grid: oof(config, tmp_path_factory.mktemp("oof_fp32"), *[a for key in keys for a in ("--set", key)])
        for grid, keys in GRIDS.items()
    }


@pytest.mark.parametrize(
    ("backend", "precision", "grid"),
    [
        pytest.param("torch", "bf16", "every pair predicted", marks=needs_bf16()),
        pytest.param("openvino", "bf16", "every pair predicted", marks=[needs("openvino"), needs_bf16()]),
        pytest.param("openvino", "bf16", "tuned", marks=[needs("openvino"), needs_bf16()]),
        pytest.param("onnxruntime", "fp32", "every pair predicted", marks=needs("onnxruntime")),
    ],
)
def test_the_local_cv_moves_by_less_than_0_002(backend, precision, grid, fp32_cv, config, exported, tmp_path):
    keys = [a for key in GRIDS[grid] for a in ("--set", key)]
    extra = ["--exported", exported] if backend != "torch" else []
    cv = oof(config, tmp_path, *keys, "--backend", backend, "--precision", precision, *extra)
    assert abs(cv - fp32_cv[grid]) < CV_MOVE


@needs("onnxruntime")
def test_a_pseudo_label_round_on_an_exported_backend_selects_as_torch_does(config, exported, tmp_path):
    """The same counts, and the same gate probabilities (their mean confidence), from torch and ONNX
    Runtime; the untrained gate's ~0.5 sits between the thresholds, so no image is kept either way."""
    summaries = {}
    for backend in ("torch", "onnxruntime"):
        source = ["--exported", exported] if backend != "torch" else []
        outcome = run_in_process(
            "pseudo", "--config", config, "--round", 1, "--out-dir", tmp_path / backend,
            "--p-high", 0.5, "--p-low", 0.45, "--workers", 0, "--backend", backend, *source,
        )  # fmt: skip
        assert outcome.code == 0, outcome.stderr
        summary = json.loads((tmp_path / backend / "round1_summary.json").read_text())
        summaries[backend] = {
            key: summary[key] for key in ("images_considered", "images_kept", "kept_per_class")
        }
        summaries[backend]["mean_confidence"] = pytest.approx(summary["mean_confidence"], abs=1e-4)
    assert summaries["onnxruntime"] == summaries["torch"] and summaries["torch"]["images_considered"] == 8


# --- what cannot run is one error line -----------------------------------------------------------


@pytest.mark.parametrize("name", RUNTIMES)
def test_a_missing_extra_is_one_error_line_naming_the_install_command(name, config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it fails
    outcome = infer(config, tmp_path / "submission.csv", "--backend", name)
    assert_one_error_line(outcome, f"--backend {name}: {name} is not installed", f"pip install '.[{name}]'")
    assert not list(tmp_path.iterdir())


def test_export_without_onnx_or_without_any_runtime_is_one_error_line(config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    outcome = run_in_process("export", "--config", config, "--out", tmp_path / "onnx")
    assert_one_error_line(outcome, "needs the onnx package", "pip install '.[openvino]'")
    for name in RUNTIMES:
        monkeypatch.setitem(sys.modules, name, None)
    outcome = run_in_process("export", "--config", config, "--out", tmp_path / "onnx")
    assert_one_error_line(outcome, "neither is installed", "pip install '.[onnxruntime]'")
    assert not list(tmp_path.iterdir())


def test_bf16_needs_a_cpu_with_bf16_instructions(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    )
    assert not cpu_has_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert cpu_has_bf16(cpuinfo) and not cpu_has_bf16(tmp_path / "absent")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backend_names, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="--precision bf16: this CPU has no bf16 instructions"):
        choose_backend("torch", "bf16")
    assert choose_backend("torch", "fp32") == "torch"


@needs("openvino")
def test_a_damaged_or_foreign_export_is_one_error_line(exported, config, runs, tmp_path):
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    out = tmp_path / "submission.csv"
    damaged = copy / "debug" / "fold1" / "best.onnx"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    outcome = infer(config, out, "--backend", "openvino", "--exported", copy)
    assert_one_error_line(outcome, f"{damaged}: its sha256 does not match", "export again")
    (copy / MANIFEST).unlink()
    outcome = infer(config, out, "--backend", "openvino", "--exported", copy)
    assert_one_error_line(outcome, f"{copy / MANIFEST}: not found")
    other_runs = Path(shutil.copytree(runs, tmp_path / "other_runs"))
    write_untrained(other_runs, DEBUG, 0, "trainer.seed=7")  # another checkpoint of debug fold 0
    other = debug_ensemble_file(
        tmp_path / "other", other_runs, Path(yaml.safe_load(config.read_text())["data_dir"]), tta=TTA
    )
    outcome = infer(other, out, "--backend", "openvino", "--exported", exported)
    assert_one_error_line(
        outcome, f"{exported}: holds no network exported from {other_runs}/debug/fold0/best.ckpt"
    )
    assert not out.exists()


@pytest.mark.parametrize("runtime", [pytest.param(r, marks=needs(r)) for r in RUNTIMES])
def test_a_network_file_the_runtime_cannot_parse_is_one_error_line(runtime, exported, config, tmp_path):
    """Its sha256 matches the manifest (so the export looks whole) but the runtime cannot parse it."""
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    broken = copy / "debug" / "fold0" / "best.onnx"
    broken.write_bytes(b"not a protobuf" * 64)
    manifest = json.loads((copy / MANIFEST).read_text())
    for entry in manifest["networks"]:
        if entry["file"] == "debug/fold0/best.onnx":
            entry["sha256"] = sha256_of(broken)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    out = tmp_path / "submission.csv"
    outcome = infer(config, out, "--backend", runtime, "--exported", copy)
    assert_one_error_line(outcome, f"{broken}: {runtime} cannot load this network", "export it again")
    assert not out.exists()


SIGNAL_AFTER_TEARDOWN = """
import signal, subprocess, sys
import common_blocks.training
from pathlib import Path
from common_blocks.deploy.onnx_runtimes import compile_network
signal.signal(signal.SIGCHLD, lambda *args: None)  # a Python handler, as torch's DataLoader sets one
for _ in range(3):
    first, second = (compile_network("openvino", Path(sys.argv[1]), "fp32") for _ in range(2))
    del first, second  # the first compiled goes first: out of the order the plugin swapped stacks in
    for _ in range(3):
        subprocess.run(["true"], check=True)  # the child's exit signals this thread
print("survived")
"""


@pytest.mark.subprocess
@needs("openvino")
def test_networks_compiled_and_dropped_in_any_order_leave_signals_deliverable(exported):
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core; two Cores torn down first in,
    first out left a freed stack behind, and the next signal a Python handler catches was a SIGSEGV
    (the crash that once split make test in two). One Core per process: signals stay deliverable."""
    network = exported / "debug" / "fold0" / "best.onnx"
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_AFTER_TEARDOWN, str(network)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "survived", (
        result.returncode,
        result.stderr[-2000:],
    )
    assert onnx_runtimes.openvino_core() is onnx_runtimes.openvino_core()
