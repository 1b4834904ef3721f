"""Every backend and precision writes the same submission, byte for byte, as the competition's
format spells it out. The networks here decide every pixel far from any threshold (their output layer
is a constant: see ``write_untrained(output_bias=...)``), so the expected file follows from the
ensemble's rules alone, and no rounding of any arithmetic can move it. The predictor's masks on real
maps equal post-processing's, bit for bit on every backend, in ``test_export.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from common_blocks.data.formats import list_images
from tests.cli_contract import run_in_process
from tests.debug_runs import debug_ensemble_file, write_untrained
from tests.deploy.backend_cases import backend_cases
from tests.repository import DEBUG, DEBUG_GATE

pytestmark = pytest.mark.slow  # exports and runs every backend

SEGMENTER_LOGITS = (4.0, 4.0, -4.0, 4.0)  # every pixel of classes 1, 2 and 4 a defect, none of class 3
GATE_LOGITS = (4.0, -4.0, 4.0, 4.0)  # the gate rules class 2 out
FOUND = (1, 4)
FULL_MASK = "1 409600"  # every pixel of a 256x1600 image, as run-length pairs from pixel 1


def expected_submission(data: Path, layout: str) -> str:
    """The submission the rules above give, written out by hand: the test images in the order of
    ``sample_submission.csv``, four rows each; the 2019 format names a row ``ImageId_ClassId``, the
    current one has ``ClassId`` as its own last column."""
    lines = (data / "sample_submission.csv").read_text(encoding="utf-8").splitlines()[1:]
    images = list(dict.fromkeys(line.split(",")[0] for line in lines))
    found = {k: FULL_MASK if k in FOUND else "" for k in (1, 2, 3, 4)}
    if layout == "2019":
        rows = [f"{image}_{k},{pixels}" for image in images for k, pixels in found.items()]
        return "\n".join(["ImageId_ClassId,EncodedPixels", *rows]) + "\n"
    rows = [f"{image},{pixels},{k}" for image in images for k, pixels in found.items()]
    return "\n".join(["ImageId,EncodedPixels,ClassId", *rows]) + "\n"


@pytest.fixture(scope="module")
def config(tmp_path_factory, data) -> Path:
    """The debug ensemble (two segmenter folds, two gate folds, TTA none + hflip) of decisive networks."""
    runs = tmp_path_factory.mktemp("decisive")
    for fold in (0, 1):
        write_untrained(runs, DEBUG, fold, output_bias=SEGMENTER_LOGITS)
        write_untrained(runs, DEBUG_GATE, fold, output_bias=GATE_LOGITS)
    folder = tmp_path_factory.mktemp("ensemble")
    post = {"threshold": 0.5, "min_size": 0, "min_area": 600, "gate": 0.5}
    postprocess = {"classes": [post] * 4, "thresholds_file": str(folder / "thresholds.json")}  # not tuned
    return debug_ensemble_file(folder, runs, data, tta=["none", "hflip"], postprocess=postprocess)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, config) -> Path:
    folder = tmp_path_factory.mktemp("export") / "onnx"
    outcome = run_in_process("export", "--config", config, "--out", folder)
    assert outcome.code == 0, outcome.stderr
    return folder


@pytest.mark.parametrize(
    ("backend", "precision", "layout"),
    [
        *(pytest.param(*case, "current", marks=mark, id="-".join(case)) for *case, mark in backend_cases()),
        pytest.param("torch", "fp32", "2019", id="torch-fp32-2019"),
    ],
)
def test_every_backend_writes_the_expected_submission_byte_for_byte(
    backend, precision, layout, config, data, request, tmp_path
):
    source = [] if backend == "torch" else ["--exported", request.getfixturevalue("exported")]
    out = tmp_path / "submission.csv"
    outcome = run_in_process(
        "infer", "--config", config, "--out", out, "--format", layout, "--workers", 0,
        "--backend", backend, "--precision", precision, *source,
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr
    assert len(list_images(data / "test_images")) > 1
    assert out.read_bytes() == expected_submission(data, layout).encode()
