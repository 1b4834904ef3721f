"""Ensemble inference and OOF tuning: gating, TTA, streaming, atomic output, bad input, thresholds end to end.

Members are untrained debug-size checkpoints (written in a second, no training): what is tested is the
plumbing, which does not depend on how good the models are.
"""

import contextlib
import io
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from common_blocks.cli import main as cli_main
from common_blocks.data import rle
from common_blocks.data.formats import CLASS_IDS, RLE_COLUMNS, read_image_ids, read_label_rows, read_labels
from common_blocks.errors import ConfigError
from common_blocks.evaluation.metric import score_tables, summarize
from common_blocks.evaluation.oof_stats import OofStats
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig, postprocess_image
from common_blocks.evaluation.threshold_search import SearchResult, evaluate
from common_blocks.inference.ensemble_config import EnsembleConfig, load_ensemble_config
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
from common_blocks.training.datamodule import labelled_folds, write_missing_folds
from common_blocks.training.module import DefectModule
from tests.stand_ins import StandIn, save_untrained

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"
DEBUG_GATE = ROOT / "configs" / "debug_classifier.yaml"
ENSEMBLE = ROOT / "configs" / "ensemble_debug.yaml"


def write_untrained(runs: Path, config: Path, fold: int, *overrides: str) -> None:
    """An untrained checkpoint of ``config``; the models see 32x200 images, to keep the tests fast."""
    cfg = load_config(config, ["data.scale=0.125", *overrides])
    torch.manual_seed(fold)
    save_untrained(DefectModule(cfg.model_dump(mode="json"), fold), RunPaths.of(runs, cfg.name, fold).best)


def ensemble(out: Path, runs: Path, data: Path, *overrides: str) -> EnsembleConfig:
    """The debug ensemble on these runs and data, its outputs under ``out``."""
    return load_ensemble_config(
        ENSEMBLE,
        [
            f"runs_dir={runs}",
            f"data_dir={data}",
            f"members=[{{config: {DEBUG}, folds: [0, 1]}}]",
            f"gate={{config: {DEBUG_GATE}, folds: [0, 1]}}",
            f"postprocess.thresholds_file={out / 'thresholds.json'}",
            f"leaderboard={out / 'leaderboard.csv'}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def data(synthetic_data):
    write_missing_folds(load_config(DEBUG, [f"data.data_dir={synthetic_data}"]))  # as training does
    return synthetic_data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for config in (DEBUG, DEBUG_GATE):
        for fold in (0, 1):
            write_untrained(runs, config, fold)
    return runs


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
    module = DefectModule(load_config(debug_config, ["data.scale=0.25"]).model_dump(mode="json")).eval()
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
    cfg = ensemble(tmp_path, tmp_path / "empty_runs", data)
    with pytest.raises(ConfigError) as raised:
        build_predictor(cfg)
    message = str(raised.value)
    assert message.startswith("4 checkpoint(s) of ensemble ensemble_debug missing")
    for name in ("debug", "debug_classifier"):
        for fold in (0, 1):
            assert str(RunPaths.of(tmp_path / "empty_runs", name, fold).best) in message


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_members_trained_in_different_modes_are_an_error(tmp_path, runs, data, mode):
    write_untrained(runs, DEBUG, 0, f"mode={mode}", f"name=debug_{mode}")
    members = f"members=[{{config: {DEBUG}, folds: [0]}}, {{config: debug_{mode}, folds: [0]}}]"
    cfg = ensemble(tmp_path, runs, data, members)
    with pytest.raises(ConfigError, match=rf"different modes \(debug=multilabel, debug_{mode}={mode}\)"):
        build_predictor(cfg, [0])


def test_a_classifier_member_is_an_error(tmp_path, runs, data):
    cfg = ensemble(tmp_path, runs, data, f"members=[{{config: {DEBUG_GATE}, folds: [0]}}]")
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
    from common_blocks.inference.oof import run_oof

    head = f"{{config: {HEAD}, folds: [0, 1]}}"
    cfg = ensemble(tmp_path, head_runs, data, f"members=[{head}]", f"gate={head}")
    run_oof(cfg, workers=0)
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
        ensemble(tmp_path, head_runs, data, f"members=[{head}]", f"gate={head}"), [0], runtime=runtime
    )
    checkpoint = RunPaths.of(head_runs, HEAD, 0).best
    assert runtime.loaded == [checkpoint] and predictor.gates[0].compiled is None
    images = torch.randn(2, 3, 256, 1600)
    with torch.inference_mode():
        expected = load_checkpoint(checkpoint).class_logits(images).sigmoid().numpy()
    np.testing.assert_allclose(predictor.gate_probabilities(images), expected, rtol=0, atol=1e-6)


def test_a_segmenter_without_a_class_head_is_no_gate(tmp_path, runs, data):
    cfg = ensemble(tmp_path, runs, data, f"gate={{config: {DEBUG}, folds: [0, 1]}}")
    with pytest.raises(ConfigError, match="gate: debug is a multilabel segmenter without a class head"):
        build_predictor(cfg, [0])


# --- inference.py ---------------------------------------------------------------------------------


def run_cli(main, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def run_inference(cfg_dir: Path, runs: Path, data: Path, *args) -> tuple[int, str, str]:
    return run_cli(
        cli_main,
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
            predictor, data / "test_images", submission_image_ids(data), out, batch_size=4, workers=0
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


# --- severstal oof ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oof_run(tmp_path_factory, runs, data):
    out = tmp_path_factory.mktemp("oof")
    cfg = ensemble(out, runs, data, "tta=[none, hflip]")
    config = out / "ensemble_debug.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    args = ["oof", "--config", config, "--workers", 0]
    code, stdout, stderr = run_cli(cli_main, *args)
    assert code == 0, stderr
    return cfg, stdout, args


def test_oof_writes_thresholds_and_a_leaderboard_row_with_the_evaluated_cv(oof_run, data):
    cfg, stdout, args = oof_run
    stats, result = OofStats.load(cfg.oof_path), SearchResult.load(cfg.thresholds_path)
    summary = summarize(evaluate(stats, result.config))
    folds = pd.read_csv(data / "folds.csv")
    assert sorted(stats.image_ids) == sorted(folds.loc[folds["fold"].isin([0, 1]), "ImageId"])
    assert stats.has_gate and summary.score == pytest.approx(result.score, abs=1e-12)
    assert f"local CV score {summary.score:.5f} over {stats.n_images} images" in stdout
    board = pd.read_csv(cfg.leaderboard_path)
    row = board.iloc[0]
    assert row["name"] == "ensemble_debug" and row["members"] == "debug[0,1]x1" and row["tta"] == "none+hflip"
    assert row["score"] == pytest.approx(summary.score, abs=1e-6)
    for class_id, score in summary.per_class.items():
        assert row[f"score_{class_id}"] == pytest.approx(score, abs=1e-6)
    code, _, stderr = run_cli(cli_main, *args, "--set", "tta=[none]")
    assert code == 0, stderr
    board = pd.read_csv(cfg.leaderboard_path)
    assert len(board) == 2 and board["tta"].tolist() == ["none+hflip", "none"]
    assert board["config_hash"].nunique() == 2
    assert board["backend"].tolist() == ["torch", "torch"] and board["precision"].tolist() == ["fp32", "fp32"]


def test_a_leaderboard_of_an_earlier_version_gains_the_new_columns(oof_run, tmp_path):
    """Its rows are kept as they were, with the columns added since empty; the new row has them all."""
    cfg, _, args = oof_run
    earlier = pd.read_csv(cfg.leaderboard_path, dtype=str).iloc[:1, :12]
    board_path = tmp_path / "leaderboard.csv"
    earlier.to_csv(board_path, index=False)
    code, _, stderr = run_cli(cli_main, *args, "--set", f"leaderboard={board_path}", "--set", "tta=[none]")
    assert code == 0, stderr
    board = pd.read_csv(board_path, dtype=str, keep_default_na=False)
    assert list(board.columns) == [*earlier.columns, "backend", "precision"]
    assert board.iloc[0, :12].tolist() == earlier.iloc[0].tolist()
    assert board["backend"].tolist() == ["", "torch"] and board["precision"].tolist() == ["", "fp32"]


def test_tuned_thresholds_give_inference_the_score_the_search_promised(oof_run, data):
    """Fold 0's images through the full inference path, with the tuned post-processing, score what
    the OOF statistics say that post-processing scores on them."""
    cfg, _, _ = oof_run
    postprocess, message = cfg.resolved_postprocess()
    assert postprocess == SearchResult.load(cfg.thresholds_path).config and "tuned" in message
    predictor = build_predictor(cfg, [0], postprocess=postprocess)
    table = labelled_folds(load_config(DEBUG, [f"data.data_dir={data}"]))
    valid = table[table["fold"] == 0].reset_index(drop=True)
    dataset = ReadTolerantDataset(valid, data / "train_images", with_masks=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    predicted = pd.DataFrame(
        [(p.image_id, *p.rles) for p in predict_stream(predictor, loader)], columns=valid.columns[:5]
    )
    stats = OofStats.load(cfg.oof_path)
    fold0 = stats.folds == 0
    fold0_stats = OofStats(
        **{name: getattr(stats, name) for name in ("thresholds", "min_sizes", "fill_holes")},
        **{name: getattr(stats, name)[fold0] for name in ("image_ids", "folds", "area", "intersection")},
        truth_area=stats.truth_area[fold0],
        gate=stats.gate[fold0],
    )
    promised = summarize(evaluate(fold0_stats, postprocess))
    assert summarize(score_tables(predicted, valid)).score == pytest.approx(promised.score, abs=1e-9)


def test_oof_needs_the_same_folds_everywhere(tmp_path, runs, data):
    from common_blocks.inference.oof import run_oof

    cfg = ensemble(tmp_path, runs, data, f"gate={{config: {DEBUG_GATE}, folds: [0]}}")
    with pytest.raises(ConfigError, match=r"same folds .* debug \[0, 1\], debug_classifier \[0\]"):
        run_oof(cfg)
    assert np.all([not (tmp_path / name).exists() for name in ("thresholds.json", "leaderboard.csv")])


def test_report_of_the_oof_run_references_only_existing_files(oof_run, tmp_path):
    import re

    _, _, args = oof_run
    code, stdout, stderr = run_cli(cli_main, "report", *args[1:3], "--out", tmp_path / "report", "--worst", 2)
    assert code == 0, stderr
    page = (tmp_path / "report" / "index.html").read_text()
    referenced = re.findall(r'(?:src|href)="([^"#:]+)"', page)
    assert any(name.endswith(".png") for name in referenced)
    assert all((tmp_path / "report" / name).is_file() for name in referenced)
    assert "worst" in page.lower()
