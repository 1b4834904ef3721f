import cv2
import numpy as np
import pytest

from common_blocks.data.formats import read_labels
from common_blocks.errors import ConfigError
from common_blocks.evaluation.metric import summarize
from common_blocks.evaluation.oof_stats import OofStatsBuilder
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.evaluation.threshold_search import evaluate, pair_outcomes, search
from common_blocks.reports.figures import confusion_by_class_count, label_masks
from common_blocks.reports.page import WorstImage, build_report, worst_images
from tests.references import mask_dice, postprocess_image
from tests.reports.fake_runs import linked_files, make_runs

N_IMAGES = 10
THRESHOLDS = (0.3, 0.5, 0.7)
MIN_SIZES = (0, 50)
MIN_AREAS = (0, 100, 1000)


def _fake_probs(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """Blurred truth, weakened at random, plus smooth noise that crosses low thresholds: some misses,
    some false positives."""
    blurred = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 3.0) * rng.uniform(0.4, 1.0)
    noise = cv2.GaussianBlur(rng.random(truth.shape, dtype=np.float32), (0, 0), 6.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return np.clip(blurred + 0.45 * noise, 0, 1)


@pytest.fixture(scope="module")
def oof(synthetic_data):
    """Labels, OOF stats, probabilities and search result of the first synthetic train images."""
    images_dir = synthetic_data / "train_images"
    table = read_labels(synthetic_data / "train.csv", images_dir).head(N_IMAGES).reset_index(drop=True)
    ids = table["ImageId"].tolist()
    truths = np.stack([label_masks(table, image_id) for image_id in ids])
    rng = np.random.default_rng(0)
    probs = np.stack([[_fake_probs(rng, mask) for mask in truth] for truth in truths])
    builder = OofStatsBuilder(THRESHOLDS, MIN_SIZES)
    builder.add(ids[:5], probs[:5], truths[:5], folds=0)
    builder.add(ids[5:], probs[5:], truths[5:], folds=1)
    stats = builder.build()
    return table, images_dir, stats, probs, truths, search(stats, MIN_AREAS)


def test_pair_outcomes_agree_with_evaluate_and_masks(oof):
    _, _, stats, probs, truths, result = oof
    dice, predicted = pair_outcomes(stats, result.config)
    masks = np.stack([postprocess_image(p, result.config) for p in probs])
    np.testing.assert_allclose(dice, mask_dice(masks, truths), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(predicted, masks.any(axis=(2, 3)))
    sums = evaluate(stats, result.config)
    assert dice.mean() == pytest.approx(summarize(sums).score, abs=1e-12)
    assert 0 < predicted.sum() < predicted.size and 0 < result.score < 1  # a case with hits and misses
    with pytest.raises(ConfigError, match="threshold 0.45"):
        pair_outcomes(stats, PostprocessConfig(classes=[ClassPostprocess(threshold=0.45)] * 4))


def test_worst_images_rank_by_mean_dice(oof):
    _, _, stats, probs, truths, result = oof
    worst = worst_images(stats, result.config, 4)
    masks = np.stack([postprocess_image(p, result.config) for p in probs])
    mean = mask_dice(masks, truths).mean(axis=1)
    assert [score for _, score in worst] == pytest.approx(np.sort(mean)[:4].tolist(), abs=1e-12)
    row = {image_id: i for i, image_id in enumerate(stats.image_ids.tolist())}
    assert all(mean[row[image_id]] == pytest.approx(score) for image_id, score in worst)
    assert len(worst_images(stats, result.config, 100)) == N_IMAGES


def test_confusion_counts_every_image_once(oof):
    _, _, stats, _, _, result = oof
    counts = [int(text.get_text()) for text in confusion_by_class_count(stats, result.config).axes[0].texts]
    assert len(counts) == 25 and sum(counts) == N_IMAGES


def _report(tmp_path, oof, worst):
    table, images_dir, stats, _, _, result = oof
    return build_report(
        tmp_path / "report",
        title="Synthetic <check>",
        table=table,
        stats=stats,
        result=result,
        run_dirs=make_runs(tmp_path / "runs"),
        images_dir=images_dir,
        worst=worst,
        cv_summary=summarize(evaluate(stats, result.config)),
    )


def test_report_links_only_files_it_wrote(oof, tmp_path):
    _, _, stats, probs, _, result = oof
    row = {image_id: i for i, image_id in enumerate(stats.image_ids.tolist())}
    worst = [
        WorstImage(image_id, score, postprocess_image(probs[row[image_id]], result.config))
        for image_id, score in worst_images(stats, result.config, 3)
    ]
    page = _report(tmp_path, oof, worst)
    text = page.read_text()
    links = linked_files(page)
    assert all(link.is_file() for link in links)
    assert sorted(p.name for p in page.parent.iterdir()) == sorted(
        ["index.html", *(link.name for link in links)]
    )
    assert sum(link.name.startswith("worst_") for link in links) == 3
    assert "Synthetic &lt;check&gt;" in text and f"{result.score:.5f}" in text
    assert all(item.image_id in text for item in worst)
    assert "No metrics.csv in unet/fold2." in text


def test_report_without_worst_images(oof, tmp_path):
    page = _report(tmp_path, oof, None)
    assert "Not rendered" in page.read_text()
    assert all(link.is_file() for link in linked_files(page))
