from __future__ import annotations

import pickle

import albumentations as A
import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from common_blocks.data.augment_config import AugmentConfig
from common_blocks.data.rle import IMAGE_SHAPE
from common_blocks.data.transforms import (
    DefectBlackout,
    DefectCrop,
    build_train_transform,
    seed_transform,
)

HEIGHT, WIDTH = IMAGE_SHAPE


def asymmetric_image() -> np.ndarray:
    """Grey values that differ under every flip, so a flip can be recognised from the pixels."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    return ((3 * columns + 5 * rows) % 251).astype(np.uint8)


def mask_of(image: np.ndarray) -> np.ndarray:
    """An HxWx4 mask computed from the pixels: if image and mask move alike, it stays this function."""
    return np.stack([(image % k == 0) for k in (2, 3, 5, 7)], axis=-1).astype(np.uint8)


def flips_of(patch: np.ndarray) -> tuple[bool, bool]:
    """(horizontal, vertical) flip, read off the steps of ``asymmetric_image``: +3 per column, +5 per row."""
    column_step = (int(patch[0, 1]) - int(patch[0, 0])) % 251
    row_step = (int(patch[1, 0]) - int(patch[0, 0])) % 251
    return column_step != 3, row_step != 5


def seeded_defect_crop() -> A.Compose:
    crop = A.Compose([DefectCrop(64, 128)])
    seed_transform(crop, 0)
    return crop


def test_defaults_and_validation() -> None:
    cfg = AugmentConfig()
    assert (cfg.crop_height, cfg.crop_width, cfg.crop_prefer_defect) == (256, 416, 0.5)
    with pytest.raises(ValidationError, match="extra"):
        AugmentConfig(hflp=0.5)
    with pytest.raises(ValidationError, match="both"):
        AugmentConfig(crop_height=None)
    with pytest.raises(ValidationError):
        AugmentConfig(hflip=1.5)


@pytest.mark.parametrize("grayscale", [False, True])
@pytest.mark.parametrize(("crop_height", "crop_width"), [(256, 416), (128, 800), (None, None)])
def test_train_output_size(grayscale: bool, crop_height: int | None, crop_width: int | None) -> None:
    image = asymmetric_image() if grayscale else np.dstack([asymmetric_image()] * 3)
    transform = build_train_transform(AugmentConfig(crop_height=crop_height, crop_width=crop_width), seed=0)
    expected = (crop_height or HEIGHT, crop_width or WIDTH)
    for _ in range(5):
        out = transform(image=image, mask=mask_of(asymmetric_image()))
        assert out["image"].shape == expected + image.shape[2:]
        assert out["image"].dtype == np.uint8
        assert out["mask"].shape == (*expected, 4)


def test_defect_crop_contains_the_defect() -> None:
    mask = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    mask[240:250, 1580:1590, 1] = 1  # a small defect in a corner, far from most crops
    transform = build_train_transform(AugmentConfig(crop_prefer_defect=1.0), seed=0)
    for _ in range(30):
        assert transform(image=asymmetric_image(), mask=mask)["mask"][..., 1].any()


@pytest.mark.parametrize("top_left", [(0, 0), (120, 800), (250, 1595)])
@pytest.mark.parametrize("channels", [(), (4,), (3,)])
def test_defect_crop_holds_a_defect_anywhere(top_left: tuple[int, int], channels: tuple[int, ...]) -> None:
    top, left = top_left
    mask = np.zeros((HEIGHT, WIDTH, *channels), dtype=np.uint8)
    mask[top : top + 5, left : left + 5, ...] = 1
    crop = seeded_defect_crop()
    for _ in range(20):
        out = crop(image=asymmetric_image(), mask=mask)
        assert out["image"].shape == out["mask"].shape[:2] == (64, 128)
        assert out["mask"].any()


def test_defect_crop_without_defect_is_a_random_crop() -> None:
    crop = seeded_defect_crop()
    empty = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    corners = {tuple(crop(image=asymmetric_image(), mask=empty)["image"][0, :2]) for _ in range(20)}
    assert len(corners) > 10


def test_defect_crop_larger_than_the_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="larger than"):
        A.Compose([DefectCrop(300, 416)])(image=asymmetric_image(), mask=mask_of(asymmetric_image()))


def test_random_crop_misses_a_small_defect_sometimes() -> None:
    mask = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    mask[240:250, 1580:1590, 1] = 1
    transform = build_train_transform(AugmentConfig(crop_prefer_defect=0.0), seed=0)
    hits = [transform(image=asymmetric_image(), mask=mask)["mask"].any() for _ in range(30)]
    assert not all(hits)


def test_horizontal_flip_moves_image_and_mask_alike() -> None:
    image = asymmetric_image()
    cfg = AugmentConfig(crop_height=None, crop_width=None, hflip=1.0, vflip=0.0, brightness_contrast=0.0)
    out = build_train_transform(cfg)(image=image, mask=mask_of(image))
    assert np.array_equal(out["image"], image[:, ::-1])
    assert np.array_equal(out["mask"], mask_of(image)[:, ::-1])


def test_random_crops_and_flips_keep_image_and_mask_aligned() -> None:
    image = asymmetric_image()
    transform = build_train_transform(AugmentConfig(brightness_contrast=0.0), seed=1)
    flips = set()
    for _ in range(20):
        out = transform(image=image, mask=mask_of(image))
        assert np.array_equal(out["mask"], mask_of(out["image"]))
        flips.add(flips_of(out["image"]))
    assert flips == {(True, True), (True, False), (False, True), (False, False)}


def test_train_transform_pickles() -> None:
    transform = pickle.loads(pickle.dumps(build_train_transform(AugmentConfig(), seed=0)))
    out = transform(image=asymmetric_image(), mask=mask_of(asymmetric_image()))
    assert out["image"].shape == (256, 416)


def test_crop_preference_extremes_build_a_single_crop() -> None:
    for preference, crop_type in ((1.0, DefectCrop), (0.0, A.RandomCrop)):
        one_of = build_train_transform(AugmentConfig(crop_prefer_defect=preference)).transforms[0]
        assert [type(t) for t in one_of.transforms] == [crop_type]


def blackout_case() -> tuple[np.ndarray, np.ndarray]:
    """A textured RGB image (no black pixel) and a mask with 3 components in class 1 (two of them
    touching only diagonally: one 8-connected component), 1 in class 3 overlapping class 1, none in 2 and 4."""
    image = np.stack([asymmetric_image() % 200 + 20] * 3, axis=-1)
    mask = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    mask[10:20, 10:30, 0] = 1
    mask[20:25, 30:40, 0] = 1  # touches the first at a corner
    mask[100:140, 500:700, 0] = 1
    mask[200:220, 1000:1100, 0] = 1
    mask[110:130, 650:750, 2] = 1  # overlaps the third class-1 component
    return image, mask


def test_blackout_removes_exactly_the_component_it_blacks_out() -> None:
    image, mask = blackout_case()
    components = []
    for channel in range(4):
        count, labels = cv2.connectedComponents(mask[..., channel], connectivity=8)
        components += [labels == label for label in range(1, count)]
    assert len(components) == 4
    blackout = A.Compose([DefectBlackout(p=1.0)])
    seen = set()
    for seed in range(40):
        seed_transform(blackout, seed)
        out = blackout(image=image, mask=mask)
        hole = np.all(out["image"] == 0, axis=-1)
        matches = [i for i, component in enumerate(components) if np.array_equal(hole, component)]
        assert len(matches) == 1, "the black pixels are exactly one 8-connected component of one class"
        seen.add(matches[0])
        assert np.array_equal(out["image"][~hole], image[~hole])  # nothing else changes in the image
        assert not out["mask"][hole].any()  # the hole is defect-free in every class
        assert np.array_equal(out["mask"][~hole], mask[~hole])  # and the rest of the mask is kept
    assert seen == {0, 1, 2, 3}  # every component can be drawn


def test_blackout_leaves_an_image_without_defects_alone() -> None:
    image, _ = blackout_case()
    out = A.Compose([DefectBlackout(p=1.0)])(image=image, mask=np.zeros((HEIGHT, WIDTH, 4), np.uint8))
    assert np.array_equal(out["image"], image)


def test_blackout_is_in_the_pipeline_only_when_asked_for() -> None:
    names = [type(t).__name__ for t in build_train_transform(AugmentConfig(blackout=0.3)).transforms]
    assert "DefectBlackout" in names
    assert "DefectBlackout" not in [
        type(t).__name__ for t in build_train_transform(AugmentConfig()).transforms
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"crop_widths": (256, 416)}, "crop_width null"),
        ({"crop_width": None, "crop_widths": (256, 400)}, "multiples of 32"),
        ({"crop_width": None, "crop_widths": (256, 256)}, "distinct"),
        ({"crop_width": None, "crop_height": None, "crop_widths": (256,)}, "crop_height set"),
    ],
)
def test_bad_multi_scale_crop_widths_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AugmentConfig(**fields)


def test_a_multi_scale_pipeline_crops_to_its_own_width() -> None:
    cfg = AugmentConfig(crop_width=None, crop_widths=(256, 608))
    image = asymmetric_image()
    for width in cfg.crop_widths:
        out = build_train_transform(cfg, seed=0, crop_width=width)(image=image, mask=mask_of(image))
        assert out["image"].shape == (256, width) and out["mask"].shape == (256, width, 4)


@pytest.mark.subprocess
def test_loading_the_augmentations_asks_no_server_for_albumentations_releases():
    """albumentations checks PyPI for a newer release at every import unless told not to; the data
    package tells it not to (a user's own setting stays), so no process of the pipeline waits on it."""
    import os
    import subprocess
    import sys

    probe = (
        "import urllib.request\n"
        "def refuse(self, url, *args, **kwargs):\n"
        "    raise SystemExit(f'asked {getattr(url, \"full_url\", url)}')\n"
        "urllib.request.OpenerDirector.open = refuse\n"
        "import common_blocks.data.transforms\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
