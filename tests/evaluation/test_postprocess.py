import json

import numpy as np
import pytest
from pydantic import ValidationError

from common_blocks.evaluation.postprocess import (
    ClassPostprocess,
    PostprocessConfig,
    binary_mask,
    fill_mask_holes,
    postprocess_mask,
)


def _prob(mask: np.ndarray, value: float = 0.9) -> np.ndarray:
    return np.where(mask > 0, value, 0.1).astype(np.float32)


def test_threshold_is_strict_and_compared_in_the_map_dtype():
    prob = np.array([[0.5, 0.50001, 0.55]], dtype=np.float32)
    assert postprocess_mask(prob, ClassPostprocess(threshold=0.5)).tolist() == [[0, 1, 1]]
    assert binary_mask(prob, 0.55, False).tolist() == binary_mask(prob, np.float64(0.55), False).tolist()


def test_holes_are_filled_but_not_bays_open_to_the_border():
    mask = np.zeros((7, 9), np.uint8)
    mask[1:6, 1:6] = 1
    mask[2:4, 2:4] = 0  # a hole
    mask[0:3, 7] = 1
    mask[0:2, 8] = 1
    filled = fill_mask_holes(mask)
    assert filled[2:4, 2:4].all()
    assert filled.sum() == mask.sum() + 4
    bay = np.ones((5, 5), np.uint8)
    bay[1:3, 2] = 0
    bay[0, 2] = 0  # the gap reaches the top border
    assert np.array_equal(fill_mask_holes(bay), bay)
    cfg = ClassPostprocess(threshold=0.5, fill_holes=True)
    assert np.array_equal(postprocess_mask(_prob(mask), cfg), filled)


def test_hole_filling_matches_scipy_on_random_masks():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.7):
        mask = (rng.random((40, 60)) < density).astype(np.uint8)
        assert np.array_equal(fill_mask_holes(mask), ndimage.binary_fill_holes(mask).astype(np.uint8))


def test_small_components_are_removed_with_8_connectivity():
    mask = np.zeros((10, 12), np.uint8)
    mask[0:3, 0:3] = 1  # 9 pixels
    mask[6, 6] = mask[7, 7] = 1  # two pixels touching at a corner: one component of 2
    mask[9, 11] = 1  # 1 pixel
    prob = _prob(mask)
    assert postprocess_mask(prob, ClassPostprocess(min_size=2)).sum() == 11
    kept = postprocess_mask(prob, ClassPostprocess(min_size=3))
    assert kept.sum() == 9 and kept[0:3, 0:3].all()
    assert postprocess_mask(prob, ClassPostprocess(min_size=10)).sum() == 0
    assert postprocess_mask(prob, ClassPostprocess(min_size=0)).sum() == 12


def test_mask_below_min_area_is_dropped_after_component_removal():
    mask = np.zeros((10, 12), np.uint8)
    mask[0:3, 0:3] = 1  # 9 pixels
    mask[9, 11] = 1
    prob = _prob(mask)
    assert postprocess_mask(prob, ClassPostprocess(min_area=10)).sum() == 10
    assert postprocess_mask(prob, ClassPostprocess(min_area=11)).sum() == 0
    assert postprocess_mask(prob, ClassPostprocess(min_size=2, min_area=10)).sum() == 0
    assert postprocess_mask(prob, ClassPostprocess(min_size=2, min_area=9)).sum() == 9


def test_gate_drops_the_mask_below_its_threshold_only():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:4, 1:4] = 1
    prob = _prob(mask)
    cfg = ClassPostprocess(gate=0.5)
    assert postprocess_mask(prob, cfg, gate_prob=0.49).sum() == 0
    assert postprocess_mask(prob, cfg, gate_prob=0.5).sum() == 9
    assert postprocess_mask(prob, cfg, gate_prob=None).sum() == 9
    assert postprocess_mask(prob, cfg, gate_prob=float("nan")).sum() == 9
    assert postprocess_mask(prob, cfg, gate_prob=np.float32(0.3)).sum() == 0


def test_postprocess_mask_refuses_what_is_not_a_probability_map():
    with pytest.raises(ValueError):
        postprocess_mask(np.zeros((4, 4), np.uint8), ClassPostprocess())


def test_config_validates_and_round_trips_through_json():
    config = PostprocessConfig(classes=[ClassPostprocess(threshold=0.4, min_area=800, gate=0.5)] * 4)
    assert PostprocessConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json")))) == config
    assert len(PostprocessConfig().classes) == 4
    with pytest.raises(ValidationError):
        ClassPostprocess(threshold=0.5, min_sise=3)
    with pytest.raises(ValidationError):
        ClassPostprocess(threshold=1.5)
    with pytest.raises(ValidationError):
        PostprocessConfig(classes=[ClassPostprocess()] * 3)


def test_every_setting_of_a_class_is_rendered_for_people():
    """The oof summary and the report show ``rendered()``: a field added later cannot be left out."""
    soft = ClassPostprocess(
        threshold=0.45, min_size=50, min_area=400, gate=0.6, gate_factor=2.0, fill_holes=True
    )
    shown = soft.rendered()
    assert len(shown) == len(ClassPostprocess.model_fields)
    assert shown == {
        "threshold": "0.45",
        "min size": "50",
        "min area": "400",
        "gate": "0.6",
        "gate factor": "x2",
        "fill holes": "yes",
    }
    assert ClassPostprocess().rendered()["gate factor"] == "none (hard gate)"
