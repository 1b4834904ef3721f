"""Ensemble inference: gating, TTA, streaming, the class head as the gate, ``inference.py``'s outputs and
bad input, over stand-in networks and untrained debug runs (``tests/debug_runs.py``)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common_blocks.data import rle
from common_blocks.data.formats import CLASS_IDS, RLE_COLUMNS, read_image_ids, read_label_rows, read_labels
from common_blocks.errors import ConfigError
from common_blocks.evaluation.oof_stats import OofStats
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.inference.options import PredictOptions
from common_blocks.inference.predictor import (
    EMPTY_RLES,
    EnsemblePredictor,
    WeightedModel,
    build_predictor,
)
from common_blocks.inference.submission import (
    ReadTolerantDataset,
    make_submission,
    predict_stream,
    submission_image_ids,
)
from common_blocks.reports.figures import LABEL_WIDTH, ROW_GAP, TRUTH_COLOUR
from common_blocks.run_folder import RunPaths
from common_blocks.training.checkpoints import load_checkpoint
from common_blocks.training.config import load_config
from common_blocks.training.folds_file import labelled_folds
from common_blocks.training.network import DefectNetwork
from tests.cli_contract import Outcome, run_in_process
from tests.debug_runs import debug_ensemble, write_untrained
from tests.references import postprocess_image
from tests.repository import DEBUG, DEBUG_GATE, ENSEMBLE
from tests.stand_ins import StandIn


@pytest.mark.subprocess
def test_importing_the_predictor_loads_no_lightning():
    """Prediction runs the plain network (``training.network``): a fresh interpreter that imports the
    predictor has loaded neither Lightning nor torchmetrics (``tests/test_package.py`` checks every
    inference and deploy module statically)."""
    code = (
        "import sys, common_blocks.inference.predictor; "
        "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', 'torchmetrics'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


class Recorder(StandIn):
    """A stand-in network: ``function(images)`` as logits; counts the images it sees."""

    def __init__(self, task_mode: str, function) -> None:
        super().__init__(task_mode)
        self.function = function
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images_seen += images.shape[0]
        return self.function(images)


def pointwise(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel logits: commutes with flips."""
    return images[:, :1] * torch.tensor([1.0, 2.0, -1.0, 0.5]).view(1, 4, 1, 1)


def asymmetric_images(n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 3, 32, 48) + torch.linspace(-2, 2, 48) + torch.linspace(0, 1, 32)[:, None]


# --- the predictor, with stand-in networks --------------------------------------------------------


def test_gate_skips_segmentation_of_images_without_defects_and_changes_nothing_else():
    images = asymmetric_images(6)
    images[1::2] -= 5  # the gate below says "no defect" for these
    gate = Recorder("classification", lambda x: 10 * x.mean(dim=(1, 2, 3))[:, None].repeat(1, 4))
    segmenter = Recorder("multilabel", pointwise)
    config = PostprocessConfig(classes=(ClassPostprocess(gate=0.5),) * 4)
    gated = EnsemblePredictor([WeightedModel(segmenter)], [WeightedModel(gate)], postprocess=config)
    rles = gated.predict(images)
    assert segmenter.images_seen == 3 and gated.segmented_images == 3 and gate.images_seen == 6
    assert rles[1::2] == [EMPTY_RLES] * 3
    ungated = EnsemblePredictor([WeightedModel(Recorder("multilabel", pointwise))], postprocess=config)
    assert rles[::2] == ungated.predict(images)[::2] and all(any(r) for r in rles[::2])


@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_tta_flips_predictions_back(average):
    images = asymmetric_images()
    plain = EnsemblePredictor([WeightedModel(Recorder("multilabel", pointwise))], average=average)
    flipped = EnsemblePredictor(
        [WeightedModel(Recorder("multilabel", pointwise))], tta=["none", "hflip", "vflip"], average=average
    )
    assert torch.allclose(flipped.probabilities(images), plain.probabilities(images), atol=1e-6)

    def position_dependent(x):  # does not commute with flips: the TTA mean is not the plain prediction
        return x[:, :1].cumsum(-1).repeat(1, 4, 1, 1) / 10

    hflip = EnsemblePredictor(
        [WeightedModel(Recorder("multilabel", position_dependent))], tta=["none", "hflip"]
    )
    both = [position_dependent(images), position_dependent(images.flip(-1)).flip(-1)]
    expected = (both[0].sigmoid() + both[1].sigmoid()) / 2
    assert torch.allclose(hflip.probabilities(images), expected, atol=1e-6)


def test_a_scaled_member_averages_its_flips_at_its_own_resolution_and_resizes_once(debug_config):
    """data.scale 0.25: the flipped-back, activated passes are averaged on the 8x12 logits of these
    32x48 images, and that average is resized to 32x48 (not each pass's logits)."""
    torch.manual_seed(0)
    module = DefectNetwork(load_config(debug_config, ["data.scale=0.25"]).model_dump(mode="json")).eval()
    images = asymmetric_images()
    predictor = EnsemblePredictor([WeightedModel(module)], tta=["none", "hflip"])
    with torch.inference_mode():
        low = [module.model_logits(images), module.model_logits(images.flip(-1)).flip(-1)]
        expected = module.to_input_size((low[0].sigmoid() + low[1].sigmoid()) / 2, images)
        assert low[0].shape[-2:] == (8, 12)
        assert torch.allclose(predictor.probabilities(images), expected, atol=1e-6)


def test_members_are_weighted():
    images = asymmetric_images()
    low, high = (
        Recorder("multilabel", lambda x, v=v: torch.full((x.shape[0], 4, 32, 48), v)) for v in (-1, 2)
    )
    predictor = EnsemblePredictor([WeightedModel(low, 3.0), WeightedModel(high, 1.0)])
    expected = (3 * torch.sigmoid(torch.tensor(-1.0)) + torch.sigmoid(torch.tensor(2.0))) / 4
    assert torch.allclose(predictor.probabilities(images), expected.expand(2, 4, 32, 48))


def test_masks_and_rles_are_those_of_postprocess_image():
    images = asymmetric_images(3)
    images[1] = -3.0  # most of this image's maps stay below their thresholds
    config = PostprocessConfig(
        classes=(
            ClassPostprocess(threshold=0.6, min_size=40, fill_holes=True),
            ClassPostprocess(threshold=0.3, min_area=300),
            ClassPostprocess(threshold=0.95),
            ClassPostprocess(threshold=0.5),
        )
    )
    predictor = EnsemblePredictor([WeightedModel(Recorder("multilabel", pointwise))], postprocess=config)
    _, masks = predictor.predict_masks(images)
    expected = np.stack([postprocess_image(p, config) for p in predictor.probabilities(images).numpy()])
    kept = masks.any(axis=(2, 3))
    assert np.array_equal(masks, expected) and kept.any() and not kept.all()
    assert predictor.predict(images) == [tuple(rle.encode(m) for m in image_masks) for image_masks in masks]


def test_prediction_streams_one_batch_at_a_time_and_skips_unreadable_items():
    pulled = []
    segmenter = Recorder("multilabel", pointwise)

    def batches():
        for k in range(3):
            pulled.append(k)
            yield {
                "image": asymmetric_images(),
                "image_id": [f"{k}a", f"{k}b"],
                "error": ["", "bad" * (k == 1)],
            }

    stream = predict_stream(EnsemblePredictor([WeightedModel(segmenter)]), batches())
    first = next(stream)
    assert pulled == [0] and first.image_id == "0a" and first.error == ""
    rest = list(stream)
    assert pulled == [0, 1, 2] and [p.image_id for p in rest] == ["0b", "1a", "1b", "2a", "2b"]
    assert rest[2].error == "bad" and rest[2].rles == EMPTY_RLES and segmenter.images_seen == 5


# --- loading the ensemble ---------------------------------------------------------------------------


def test_missing_checkpoints_are_listed_in_one_error(tmp_path, data):
    cfg = debug_ensemble(tmp_path, tmp_path / "empty_runs", data)
    with pytest.raises(ConfigError) as raised:
        build_predictor(cfg)
    message = str(raised.value)
    assert message.startswith("4 checkpoint(s) of ensemble ensemble_debug missing")
    for name in ("debug", "debug_classifier"):
        for fold in (0, 1):
            assert str(RunPaths.of(tmp_path / "empty_runs", name, fold).best) in message


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_members_trained_in_different_modes_are_an_error(tmp_path, runs, data, mode):
    write_untrained(runs, DEBUG, 0, f"mode={mode}", f"name=debug_{mode}")
    members = f"members=[{{config: {DEBUG}, folds: [0]}}, {{config: debug_{mode}, folds: [0]}}]"
    cfg = debug_ensemble(tmp_path, runs, data, members)
    with pytest.raises(ConfigError, match=rf"different modes \(debug=multilabel, debug_{mode}={mode}\)"):
        build_predictor(cfg, [0])


def test_a_classifier_member_is_an_error(tmp_path, runs, data):
    cfg = debug_ensemble(tmp_path, runs, data, f"members=[{{config: {DEBUG_GATE}, folds: [0]}}]")
    with pytest.raises(ConfigError, match="debug_classifier is a classifier; list it as the gate"):
        build_predictor(cfg, [0])


# --- a segmenter's class head as the gate ---------------------------------------------------------

HEAD = "debug_head"


@pytest.fixture(scope="module")
def head_runs(runs):
    """Untrained debug segmenters with a class head, beside the other runs."""
    for fold in (0, 1):
        write_untrained(runs, DEBUG, fold, "class_head={}", f"name={HEAD}")
    return runs


def test_a_segmenters_class_head_is_the_gate_without_a_classifier(tmp_path, head_runs, data):
    """The gate's probabilities are the class head's, in the OOF statistics too, where the search can
    gate with them; the members need no separate classifier."""
    from common_blocks.inference.oof_search import run_oof

    head = f"{{config: {HEAD}, folds: [0, 1]}}"
    cfg = debug_ensemble(tmp_path, head_runs, data, f"members=[{head}]", f"gate={head}")
    run_oof(cfg, PredictOptions(workers=0))
    stats = OofStats.load(cfg.oof_path)
    assert stats.has_gate
    table = labelled_folds(load_config(DEBUG, [f"data.data_dir={data}"]))
    for fold in (0, 1):
        module = load_checkpoint(RunPaths.of(head_runs, HEAD, fold).best, channels_last=True)
        valid = table[table["fold"] == fold].reset_index(drop=True)
        images = torch.stack([item["image"] for item in ReadTolerantDataset(valid, data / "train_images")])
        with torch.inference_mode():
            expected = module.model_outputs(images)[1].sigmoid().numpy()
        by_id = dict(zip(stats.image_ids, stats.gate, strict=True))
        np.testing.assert_allclose([by_id[i] for i in valid["ImageId"]], expected, rtol=0, atol=1e-6)


class LoadRecorder:
    """A stand-in ``Runtime``: records the checkpoints it is asked to compile, runs the torch module."""

    name = "recorder"

    def __init__(self) -> None:
        self.loaded: list[Path] = []

    def load(self, checkpoint: Path, precision: str):
        self.loaded.append(checkpoint)
        return load_checkpoint(checkpoint, channels_last=True).model_logits


def test_a_class_head_gate_runs_in_torch_under_a_backend(tmp_path, head_runs, data):
    """Exports are of ``model_logits``: a backend compiles the member's network; the gate pass of the
    same checkpoint (encoder and head) stays in torch and gives the head's probabilities."""
    head = f"{{config: {HEAD}, folds: [0]}}"
    runtime = LoadRecorder()
    predictor = build_predictor(
        debug_ensemble(tmp_path, head_runs, data, f"members=[{head}]", f"gate={head}"), [0], runtime=runtime
    )
    checkpoint = RunPaths.of(head_runs, HEAD, 0).best
    assert runtime.loaded == [checkpoint] and predictor.gates[0].compiled is None
    images = torch.randn(2, 3, 256, 1600)
    with torch.inference_mode():
        expected = load_checkpoint(checkpoint).class_logits(images).sigmoid().numpy()
    np.testing.assert_allclose(predictor.gate_probabilities(images), expected, rtol=0, atol=1e-6)


def test_a_segmenter_without_a_class_head_is_no_gate(tmp_path, runs, data):
    cfg = debug_ensemble(tmp_path, runs, data, f"gate={{config: {DEBUG}, folds: [0, 1]}}")
    with pytest.raises(ConfigError, match="gate: debug is a multilabel segmenter without a class head"):
        build_predictor(cfg, [0])


# --- inference.py ---------------------------------------------------------------------------------


def run_inference(cfg_dir: Path, runs: Path, data: Path, *args) -> Outcome:
    return run_in_process(
        "infer",
        "--config", ENSEMBLE,
        "--set", f"runs_dir={runs}",
        "--set", f"members=[{{config: {DEBUG}, folds: [0, 1]}}]",
        "--set", f"gate={{config: {DEBUG_GATE}, folds: [0, 1]}}",
        "--set", f"postprocess.thresholds_file={cfg_dir / 'thresholds.json'}",
        "--set", "tta=[none]",
        "--data-dir", data,
        "--workers", 0,
        *args,
    )  # fmt: skip


@pytest.fixture
def copied_test_data(tmp_path, data):
    """A copy of the test images without sample_submission.csv: ids come from the folder."""
    shutil.copytree(data / "test_images", tmp_path / "copy" / "test_images")
    return tmp_path / "copy"


def test_submission_covers_every_test_image(tmp_path, runs, data):
    out = tmp_path / "submission.csv"
    code, stdout, stderr = run_inference(tmp_path, runs, data, "--out", out, "--format", "2019")
    assert code == 0, stderr
    assert "default post-processing" in stdout and f"wrote {out}: 8 images" in stdout
    assert out.read_text().startswith("ImageId_ClassId,EncodedPixels\n")
    rows = read_label_rows(out)
    assert len(rows) == 32 and set(rows["ImageId"]) == set(read_image_ids(data / "sample_submission.csv"))


def test_unreadable_image_is_an_error_or_skipped_and_listed(tmp_path, runs, copied_test_data):
    bad = sorted((copied_test_data / "test_images").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "submission.csv"
    code, _, stderr = run_inference(tmp_path, runs, copied_test_data, "--out", out)
    assert code == 2 and "Traceback" not in stderr and not out.exists()
    assert stderr.strip().splitlines() == [
        f"error: {bad}: not a readable image file (--skip-bad-images predicts no defect for it)"
    ]
    code, stdout, stderr = run_inference(tmp_path, runs, copied_test_data, "--out", out, "--skip-bad-images")
    assert code == 0, stderr
    assert f"1 unreadable image(s) predicted as defect-free:\n  {bad}: not a readable image file" in stdout
    rows = read_label_rows(out)
    assert len(rows) == 32 and (rows.loc[rows["ImageId"] == bad.name, "EncodedPixels"] == "").all()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty test folder", "no images (.jpg, .jpeg, .png) in the folder"),
        ("missing checkpoints", "4 checkpoint(s)"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, runs, copied_test_data, case, message):
    if case == "empty test folder":
        shutil.rmtree(copied_test_data / "test_images")
        (copied_test_data / "test_images").mkdir()
    else:
        runs = tmp_path / "no_runs"
    code, _, stderr = run_inference(tmp_path, runs, copied_test_data, "--out", tmp_path / "submission.csv")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr
    assert not (tmp_path / "submission.csv").exists()


def test_a_crash_mid_run_leaves_the_existing_submission_untouched(tmp_path, data):
    out = tmp_path / "submission.csv"
    out.write_text("the previous submission\n")
    predictor = EnsemblePredictor([WeightedModel(Recorder("multilabel", pointwise))])
    calls = []

    def crash_on_second_batch(images):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return [EMPTY_RLES] * images.shape[0]

    predictor.predict = crash_on_second_batch
    with pytest.raises(RuntimeError, match="killed"):
        make_submission(
            predictor,
            data / "test_images",
            submission_image_ids(data),
            out,
            options=PredictOptions(batch_size=4, workers=0),
        )
    assert out.read_text() == "the previous submission\n" and list(tmp_path.iterdir()) == [out]


def test_one_image_overlay(tmp_path, runs, data):
    """The overlay is the report's picture: a labelled row per class with a true or predicted defect,
    the truth drawn red outside its mask."""
    truth = read_labels(data / "test_labels.csv", data / "test_images")
    row = truth[truth[list(RLE_COLUMNS)].ne("").any(axis=1)].iloc[0]
    image = data / "test_images" / row["ImageId"]
    overlay = tmp_path / "overlay.png"
    args = ["--image", image, "--overlay", overlay, "--truth", data / "test_labels.csv"]
    code, stdout, stderr = run_inference(tmp_path, runs, data, *args)
    assert code == 0, stderr
    assert f"{image.name} predicted: " in stdout and f"{image.name} truth: class " in stdout
    predicted_classes = {int(c) for c in re.findall(r"class (\d): ", stdout.splitlines()[1])}
    true_classes = {c for c, column in zip(CLASS_IDS, RLE_COLUMNS, strict=True) if row[column]}
    rows = len(true_classes | predicted_classes)
    picture = cv2.cvtColor(cv2.imread(str(overlay)), cv2.COLOR_BGR2RGB)
    assert picture.shape == (rows * 256 + (rows - 1) * ROW_GAP, LABEL_WIDTH + 1600, 3)
    assert (picture == TRUTH_COLOUR).all(axis=-1).any()
