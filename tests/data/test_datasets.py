from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common_blocks.data import datasets, images, rle
from common_blocks.data.augment_config import AugmentConfig
from common_blocks.data.datasets import (
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationDataset,
    SegmentationDataset,
    to_tensor,
)
from common_blocks.data.formats import RLE_COLUMNS, class_presence, read_labels
from common_blocks.data.images import read_image
from common_blocks.data.transforms import build_train_transform
from common_blocks.errors import DataError

HEIGHT, WIDTH = rle.IMAGE_SHAPE


def defect_mask(top: int, left: int, size: int = 20) -> np.ndarray:
    mask = np.zeros(rle.IMAGE_SHAPE, dtype=np.uint8)
    mask[top : top + size, left : left + size] = 1
    return mask


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """Two lossless images: one with defects of classes 1 and 3, one without defects."""
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    table = pd.DataFrame(
        {
            "ImageId": ["a.png", "b.png"],
            "rle_1": [rle.encode(defect_mask(10, 100)), ""],
            "rle_2": ["", ""],
            "rle_3": [rle.encode(defect_mask(200, 1500)), ""],
            "rle_4": ["", ""],
        }
    )
    return table, tmp_path


@pytest.mark.parametrize(("grayscale", "channels"), [(False, 3), (True, 1)])
@pytest.mark.parametrize(("crop", "width"), [(False, WIDTH), (True, 416)])
def test_item_shapes_and_dtypes(synthetic, grayscale: bool, channels: int, crop: bool, width: int) -> None:
    table, images_dir = synthetic
    transform = build_train_transform(AugmentConfig(), seed=0) if crop else None
    dataset = SegmentationDataset(table, images_dir, transform=transform, grayscale=grayscale)
    item = dataset[1]
    assert len(dataset) == 2
    assert item["image"].shape == (channels, HEIGHT, width)
    assert item["image"].dtype == torch.float32
    assert item["mask"].shape == (4, HEIGHT, width)
    assert item["mask"].dtype == torch.uint8
    assert item["image_id"] == "b.png"
    assert item["index"] == 1


def test_mask_values_are_the_decoded_rles(synthetic) -> None:
    table, images_dir = synthetic
    mask = SegmentationDataset(table, images_dir)[0]["mask"]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    for channel, column in enumerate(RLE_COLUMNS):
        expected = rle.decode(table.loc[0, column])
        assert torch.equal(mask[channel], torch.from_numpy(expected).float())


def test_without_masks_serves_only_images(synthetic) -> None:
    table, images_dir = synthetic
    item = SegmentationDataset(table[["ImageId"]], images_dir, with_masks=False)[0]
    assert set(item) == {"image", "image_id", "index"}


def test_missing_label_column_is_a_data_error(synthetic) -> None:
    table, images_dir = synthetic
    with pytest.raises(DataError, match="rle_4"):
        SegmentationDataset(table.drop(columns="rle_4"), images_dir)


@pytest.mark.parametrize(
    ("channels", "mean", "std"), [(3, IMAGENET_MEAN, IMAGENET_STD), (1, GREY_MEAN, GREY_STD)]
)
def test_to_tensor_normalises_per_channel(channels: int, mean: tuple, std: tuple) -> None:
    image = np.full((4, 5, channels), 51, dtype=np.uint8).squeeze(axis=-1 if channels == 1 else ())
    tensor = to_tensor(image)
    assert tensor.shape == (channels, 4, 5)
    assert tensor.dtype == torch.float32
    expected = (51 / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(tensor[:, 0, 0].numpy(), expected, rtol=1e-5)


def test_to_tensor_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((4, 5, 3), dtype=np.float32))


def test_classification_target_is_class_presence(synthetic) -> None:
    table, images_dir = synthetic
    dataset = ClassificationDataset(table, images_dir)
    targets = torch.stack([dataset[i]["target"] for i in range(len(dataset))])
    assert "mask" not in dataset[0]
    assert targets.dtype == torch.float32
    assert torch.equal(targets, torch.from_numpy(class_presence(table)).float())


def test_classification_target_follows_the_crop(synthetic) -> None:
    table, images_dir = synthetic
    transform = build_train_transform(AugmentConfig(crop_width=200, crop_prefer_defect=0.0), seed=0)
    dataset = ClassificationDataset(table, images_dir, transform=transform)
    seen = {tuple(dataset[0]["target"].tolist()) for _ in range(20)}
    # the two defects are 1400 px apart: a 200 px crop holds at most one of them
    assert seen <= {(0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)}
    assert len(seen) > 1


@pytest.mark.parametrize("width", [WIDTH, 416])
def test_masks_at_the_network_resolution_are_the_losss_area_average(synthetic, width: int) -> None:
    """``mask_scale`` 0.25: the training mask comes as the float fractions that the loss would
    otherwise compute from the full mask with ``F.interpolate(mode="area")``, bit for bit."""
    table, images_dir = synthetic
    crop = {"crop_height": None, "crop_width": None} if width == WIDTH else {"crop_width": width}
    augment = AugmentConfig(**crop, crop_prefer_defect=1.0)
    full = SegmentationDataset(table, images_dir, transform=build_train_transform(augment))
    small = SegmentationDataset(table, images_dir, transform=build_train_transform(augment), mask_scale=0.25)
    torch.manual_seed(3)  # both datasets seed their augmentations from it: the same crop and flips
    expected = F.interpolate(full[0]["mask"][None].float(), scale_factor=0.25, mode="area")[0]
    actual = small[0]["mask"]
    assert actual.dtype == torch.float32 and actual.shape == (4, HEIGHT // 4, width // 4)
    assert torch.equal(actual, expected) and actual.sum() > 0
    if width == WIDTH:  # class 1's square starts at row 10, inside a 4x4 block: partial blocks
        assert set(actual[0].unique().tolist()) > {0.0, 1.0}


@pytest.mark.parametrize("scale", [1.0, 0.3, 1 / 3])
def test_masks_stay_full_where_blocks_are_not_exact(synthetic, scale: float) -> None:
    table, images_dir = synthetic
    mask = SegmentationDataset(table, images_dir, mask_scale=scale)[0]["mask"]
    assert mask.dtype == torch.uint8 and mask.shape == (4, HEIGHT, WIDTH)


def test_cached_images_are_decoded_once_and_give_the_same_items(
    synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, images_dir = synthetic
    reads = []
    decode = datasets.read_image
    monkeypatch.setattr(
        datasets, "read_image", lambda path, **kwargs: reads.append(path) or decode(path, **kwargs)
    )
    cached = SegmentationDataset(table, images_dir, grayscale=True, cache_images=True)
    plain = SegmentationDataset(table, images_dir, grayscale=True)
    for _ in range(3):
        for index in range(len(table)):
            first, second = cached[index], plain[index]
            assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
    assert len(reads) == 2 + 3 * 2  # the cached dataset read each image once, the plain one every time
    with pytest.raises(ValueError, match="read-only"):
        cached.read_image(0)[0, 0] = 1  # a transform writing into it fails instead of changing later epochs


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="broken.jpg"):
        read_image(broken)
    with pytest.raises(DataError, match="absent.jpg: file not found"):
        read_image(tmp_path / "absent.jpg")


def test_wrongly_sized_image_names_the_file(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((256, 800, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"small.png: image is 800x256 \(WxH\), expected 1600x256"):
        read_image(small)
    assert read_image(small, expected_shape=(256, 800)).shape == (256, 800, 3)
    assert read_image(small, grayscale=True, expected_shape=None).shape == (256, 800)


def test_dataset_reports_the_bad_file(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    table = pd.DataFrame({"ImageId": ["broken.jpg"], **{column: [""] for column in RLE_COLUMNS}})
    with pytest.raises(DataError, match="broken.jpg"):
        SegmentationDataset(table, tmp_path)[0]


@pytest.mark.parametrize("decodes_rgb", [True, False])
def test_read_image_returns_rgb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decodes_rgb: bool) -> None:
    if not decodes_rgb:  # the path of OpenCV builds without IMREAD_COLOR_RGB
        monkeypatch.setattr(images, "_COLOR_FLAG", cv2.IMREAD_COLOR)
        monkeypatch.setattr(images, "_DECODES_RGB", False)
    bgr = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's channel order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = read_image(tmp_path / "blue.png")
    assert rgb.dtype == np.uint8
    assert (rgb[0, 0] == [0, 0, 200]).all()


def crop_offsets(loader: DataLoader) -> list[int]:
    """Left edge (mod 256) of each crop, read off an image whose columns count 0, 1, 2, ..."""
    first_pixels = [batch["image"][0, 0, 0, 0].item() for batch in loader]
    return [round((value * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255) for value in first_pixels]


def test_workers_and_epochs_draw_different_augmentations(tmp_path: Path) -> None:
    columns = np.tile(np.arange(WIDTH) % 256, (HEIGHT, 1)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "ramp.png"), np.dstack([columns] * 3))
    table = pd.DataFrame({"ImageId": ["ramp.png"] * 8, **{column: [""] * 8 for column in RLE_COLUMNS}})
    config = AugmentConfig(crop_width=64, crop_prefer_defect=0.0, hflip=0, vflip=0, brightness_contrast=0)
    dataset = SegmentationDataset(table, tmp_path, transform=build_train_transform(config))
    torch.manual_seed(0)  # DataLoader draws the workers' seeds from torch's generator
    loader = DataLoader(dataset, batch_size=1, num_workers=2)
    first_epoch, second_epoch = crop_offsets(loader), crop_offsets(loader)
    # batches alternate between the two workers; copies of one random state would pair up
    assert first_epoch[0::2] != first_epoch[1::2]
    assert first_epoch != second_epoch


def test_real_sample_item_matches_its_labels(real_sample: Path) -> None:
    images_dir = real_sample / "train_images"
    table = read_labels(real_sample / "train.csv", images_dir)
    index = int(np.flatnonzero(class_presence(table).sum(axis=1) >= 2)[0])
    item = SegmentationDataset(table, images_dir)[index]
    row = table.iloc[index]
    assert item["image_id"] == row["ImageId"]
    assert torch.equal(item["image"], to_tensor(read_image(images_dir / row["ImageId"])))
    for channel, column in enumerate(RLE_COLUMNS):
        assert torch.equal(item["mask"][channel], torch.from_numpy(rle.decode(row[column])))
    assert item["mask"].sum() > 0
