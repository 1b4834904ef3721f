import itertools
import json

import cv2
import numpy as np
import pytest

from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.image_stats import image_stats
from common_blocks.evaluation.metric import summarize
from common_blocks.evaluation.oof_stats import OofStats, OofStatsBuilder
from common_blocks.evaluation.postprocess import (
    ClassPostprocess,
    PostprocessConfig,
    postprocess_mask,
)
from common_blocks.evaluation.threshold_search import SearchResult, evaluate, search
from tests.references import mask_dice, postprocess_image

SHAPE = (32, 64)
THRESHOLDS = (0.3, 0.5, 0.7)
MIN_SIZES = (0, 5, 20)
MIN_AREAS = (0, 10, 50, 200, 800)
GATES = (0.0, 0.4, 0.7)
FACTORS = (1.0, 2.5, 6.0, None)  # 1: no gate, None: the hard gate
FILL = (False, True, False, True)


def _blobs(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    blurred = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), sigma)
    return (blurred - blurred.min()) / (blurred.max() - blurred.min() + 1e-6)


def random_case(n_images: int = 12, shape: tuple[int, int] = SHAPE, seed: int = 0):
    """Probabilities mixing smooth blobs, noise and empty maps; truths with empty classes."""
    rng = np.random.default_rng(seed)
    probs = np.empty((n_images, 4, *shape), np.float32)
    truths = np.zeros((n_images, 4, *shape), np.uint8)
    for i, k in itertools.product(range(n_images), range(4)):
        kind = rng.integers(4)
        if kind == 0:
            probs[i, k] = _blobs(rng, shape, 2.0)
        elif kind == 1:
            probs[i, k] = rng.random(shape, dtype=np.float32)
        elif kind == 2:
            probs[i, k] = 0.6 * _blobs(rng, shape, 4.0) + 0.4 * rng.random(shape, dtype=np.float32)
        else:
            probs[i, k] = 0.2 * rng.random(shape, dtype=np.float32)
        if rng.random() < 0.6:
            truths[i, k] = _blobs(rng, shape, 3.0) > rng.uniform(0.4, 0.9)
    gate = rng.random((n_images, 4)).astype(np.float32)
    return [f"img{i:02d}.jpg" for i in range(n_images)], probs, truths, gate


def build_stats(ids, probs, truths, gate=None) -> OofStats:
    builder = OofStatsBuilder(THRESHOLDS, MIN_SIZES, FILL)
    builder.add(ids[:5], probs[:5], truths[:5], folds=0, gate=None if gate is None else gate[:5])
    builder.add(ids[5:], probs[5:], truths[5:], folds=1, gate=None if gate is None else gate[5:])
    return builder.build()


@pytest.fixture(scope="module")
def case():
    ids, probs, truths, gate = random_case()
    return ids, probs, truths, gate, build_stats(ids, probs, truths, gate)


def brute_force_scores(probs, truths, gate, factors=FACTORS) -> np.ndarray:
    """(4, T, M, A, G, F) mean Dice by running the inference post-processing for every setting."""
    grids = (THRESHOLDS, MIN_SIZES, MIN_AREAS, GATES, factors)
    scores = np.empty((4, *map(len, grids)))
    for k in range(4):
        for index in itertools.product(*(range(len(g)) for g in grids)):
            t, m, a, g, f = index
            cfg = ClassPostprocess(
                threshold=THRESHOLDS[t],
                min_size=MIN_SIZES[m],
                min_area=MIN_AREAS[a],
                gate=GATES[g],
                gate_factor=factors[f],
                fill_holes=FILL[k],
            )
            gate_probs = [None] * len(probs) if gate is None else gate[:, k].tolist()
            masks = np.stack([postprocess_mask(p, cfg, gp) for p, gp in zip(probs[:, k], gate_probs)])
            scores[(k, *index)] = mask_dice(masks, truths[:, k]).mean()
    return scores


def test_image_stats_agree_with_postprocess_mask():
    rng = np.random.default_rng(3)
    shape = (48, 80)
    probs = np.stack(
        [
            rng.random(shape, dtype=np.float32),
            _blobs(rng, shape, 2.0),
            _blobs(rng, shape, 1.0),
            0.5 * _blobs(rng, shape, 3.0),
        ]
    )
    probs[3, :10] = 0  # the sweep works on the bounding box of the lowest threshold's mask
    truth = (rng.random((4, *shape)) < 0.3).astype(np.uint8)
    thresholds = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)
    min_sizes = (0, 1, 2, 3, 8, 30, 100)
    for fill in ((False,) * 4, (True,) * 4):
        area, intersection, truth_area = image_stats(probs, truth, thresholds, min_sizes, fill)
        assert area.dtype == intersection.dtype == truth_area.dtype == np.uint32
        assert truth_area.tolist() == truth.reshape(4, -1).sum(axis=1).tolist()
        for k, (t, threshold), (m, min_size) in itertools.product(
            range(4), enumerate(thresholds), enumerate(min_sizes)
        ):
            mask = postprocess_mask(
                probs[k], ClassPostprocess(threshold=threshold, min_size=min_size, fill_holes=fill[k])
            )
            assert area[k, t, m] == mask.sum()
            assert intersection[k, t, m] == (mask & truth[k]).sum()


def test_search_is_exact_against_brute_force(case):
    ids, probs, truths, gate, stats = case
    result = search(stats, MIN_AREAS, GATES, FACTORS)
    brute = brute_force_scores(probs, truths, gate)
    np.testing.assert_allclose(result.scores, brute, rtol=0, atol=1e-12)
    assert [c.gate_factor for c in result.config.classes] != [None] * 4  # the soft gate wins somewhere
    best = brute.reshape(4, -1).max(axis=1)
    np.testing.assert_allclose(result.class_scores, best, rtol=0, atol=1e-12)
    assert result.score == pytest.approx(best.mean(), abs=1e-12)
    chosen = np.stack([postprocess_image(p, result.config, g) for p, g in zip(probs, gate)])
    assert mask_dice(chosen, truths).mean() == pytest.approx(best.mean(), abs=1e-12)
    summary = summarize(evaluate(stats, result.config))
    assert summary.score == pytest.approx(result.score, abs=1e-12)
    assert result.threshold_curves().shape == (4, len(THRESHOLDS))
    assert np.allclose(result.threshold_curves().max(axis=1), result.class_scores)


def test_evaluate_matches_masks_for_any_setting(case):
    ids, probs, truths, gate, stats = case
    config = PostprocessConfig(
        classes=[
            ClassPostprocess(threshold=0.5, min_size=5, min_area=50, gate=0.4, fill_holes=False),
            ClassPostprocess(threshold=0.3, min_size=0, min_area=0, gate=0.0, fill_holes=True),
            ClassPostprocess(threshold=0.7, min_size=20, min_area=10, gate=0.7, fill_holes=False),
            ClassPostprocess(threshold=0.5, min_size=20, min_area=200, gate=0.0, fill_holes=True),
        ]
    )
    sums = evaluate(stats, config)
    masks = np.stack([postprocess_image(p, config, g) for p, g in zip(probs, gate)])
    dice = mask_dice(masks, truths)
    np.testing.assert_allclose(sums.dice, dice.sum(axis=0), rtol=0, atol=1e-12)
    pred_empty = masks.sum(axis=(2, 3)) == 0
    truth_empty = truths.sum(axis=(2, 3)) == 0
    assert sums.false_positives.tolist() == (~pred_empty & truth_empty).sum(axis=0).tolist()
    assert sums.false_negatives.tolist() == (pred_empty & ~truth_empty).sum(axis=0).tolist()
    with pytest.raises(ConfigError, match="threshold 0.45"):
        evaluate(
            stats, PostprocessConfig(classes=[ClassPostprocess(threshold=0.45, fill_holes=f) for f in FILL])
        )
    with pytest.raises(ConfigError, match="fill_holes"):
        evaluate(stats, PostprocessConfig(classes=[ClassPostprocess(threshold=0.5)] * 4))


def test_without_classifier_only_gate_zero_is_searched(case):
    ids, probs, truths, _, _ = case
    stats = build_stats(ids, probs, truths)
    assert not stats.has_gate
    result = search(stats, MIN_AREAS, GATES, FACTORS)
    assert result.gates.tolist() == [0.0] and [c.gate_factor for c in result.config.classes] == [None] * 4
    brute = brute_force_scores(probs, truths, None, (None,))[..., :1, :]
    np.testing.assert_allclose(result.scores, brute, rtol=0, atol=1e-12)
    partial = stats.gate.copy()
    partial[0] = 0.5
    with pytest.raises(DataError, match="missing for 11 of 12"):
        search(OofStats(**{**vars(stats), "gate": partial}), MIN_AREAS, GATES)


def test_ties_go_to_the_earliest_grid_values():
    ids = ["a", "b", "c"]
    probs = np.zeros((3, 4, *SHAPE), np.float32)
    truths = np.zeros((3, 4, *SHAPE), np.uint8)
    stats = build_stats(ids, probs, truths, np.full((3, 4), 0.5, np.float32))
    result = search(stats, MIN_AREAS, GATES)
    assert result.score == 1.0
    for cfg, fill in zip(result.config.classes, FILL):
        assert cfg == ClassPostprocess(
            threshold=THRESHOLDS[0], min_size=0, min_area=0, gate=0.0, fill_holes=fill
        )


def test_stats_and_result_round_trip(case, tmp_path):
    *_, stats = case
    stats.save(tmp_path / "oof.npz")
    loaded = OofStats.load(tmp_path / "oof.npz")
    for name in vars(stats):
        assert np.array_equal(getattr(loaded, name), getattr(stats, name), equal_nan=name == "gate"), name
    assert loaded.fill_holes == FILL
    result = search(stats, MIN_AREAS, GATES, FACTORS)
    result.save(tmp_path / "search.json")
    again = SearchResult.load(tmp_path / "search.json")
    assert again.config == result.config
    assert np.array_equal(again.scores, result.scores) and again.score == result.score
    assert np.array_equal(again.gate_factors, result.gate_factors)


def test_a_version_1_result_reads_as_the_hard_gate(case, tmp_path):
    """Thresholds files written before the gate factor existed keep working."""
    *_, stats = case
    result = search(stats, MIN_AREAS, GATES)
    data = result.to_dict()
    data["format_version"] = 1
    del data["grid"]["gate_factors"]
    data["scores"] = np.asarray(data["scores"])[..., 0].tolist()
    for cfg in data["config"]["classes"]:
        del cfg["gate_factor"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    again = SearchResult.load(tmp_path / "old.json")
    assert again.config == result.config and np.array_equal(again.scores, result.scores)


@pytest.mark.parametrize("factors", [(), (None, 2.0), (0.5,), (3.0, 2.0), (None, None)])
def test_bad_gate_factor_grids_are_config_errors(case, factors):
    *_, stats = case
    with pytest.raises(ConfigError, match="gate_factors"):
        search(stats, MIN_AREAS, GATES, factors)


def test_soft_gate_keeps_a_gated_mask_only_above_the_multiplied_area():
    prob = np.zeros((16, 16), np.float32)
    prob[:5, :6] = 0.9  # 30 pixels
    soft = ClassPostprocess(min_area=10, gate=0.5, gate_factor=3.0)
    assert postprocess_mask(prob, soft, gate_prob=0.4).sum() == 30  # 30 >= 10 * 3
    assert postprocess_mask(prob, soft.model_copy(update={"gate_factor": 3.5}), gate_prob=0.4).sum() == 0
    assert postprocess_mask(prob, soft.model_copy(update={"gate_factor": None}), gate_prob=0.4).sum() == 0
    assert postprocess_mask(prob, soft.model_copy(update={"min_area": 40}), gate_prob=0.6).sum() == 0
    assert postprocess_mask(prob, soft, gate_prob=0.6).sum() == 30


def test_bad_files_raise_data_errors(case, tmp_path):
    *_, stats = case
    with pytest.raises(DataError, match="not found"):
        OofStats.load(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_text("not an archive")
    with pytest.raises(DataError, match="not a readable"):
        OofStats.load(tmp_path / "garbage.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="missing format_version"):
        OofStats.load(tmp_path / "other.npz")
    fields = {name: getattr(stats, name) for name in vars(stats)}
    np.savez(tmp_path / "old.npz", format_version=0, **fields)
    with pytest.raises(DataError, match="version 0"):
        OofStats.load(tmp_path / "old.npz")
    np.savez(tmp_path / "bad.npz", format_version=1, **{**fields, "intersection": stats.area + 1})
    with pytest.raises(DataError, match="bad.npz: intersection exceeds"):
        OofStats.load(tmp_path / "bad.npz")
    (tmp_path / "search.json").write_text('{"format_version": 1}')
    with pytest.raises(DataError, match="not a search result"):
        SearchResult.load(tmp_path / "search.json")


def test_stats_refuse_duplicate_images(case):
    ids, probs, truths, _, _ = case
    with pytest.raises(DataError, match="duplicate image id.*img00.jpg"):
        build_stats([ids[0], *ids[:3]], probs[:4], truths[:4])


def test_builder_edge_cases():
    empty = OofStatsBuilder(THRESHOLDS, MIN_SIZES).build()
    assert empty.n_images == 0 and empty.area.shape == (0, 4, 3, 3)
    with pytest.raises(DataError, match="no images"):
        search(empty)
    with pytest.raises(ConfigError, match="strictly increasing"):
        OofStatsBuilder((0.5, 0.4))
    with pytest.raises(ConfigError, match="4 flags"):
        OofStatsBuilder(fill_holes=(True,))
    with pytest.raises(ConfigError, match="whole numbers"):
        OofStatsBuilder(min_sizes=(0, 50.5))
