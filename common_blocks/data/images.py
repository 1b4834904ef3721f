"""Reading steel images with OpenCV, checked, so a bad file fails with its name instead of deep in a batch."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from common_blocks.data.rle import IMAGE_SHAPE
from common_blocks.errors import DataError

# Recent OpenCV decodes JPEG straight to RGB, ~0.3 ms per 1600x256 image less than BGR + cvtColor;
# older builds (requirements allow 4.10) lack the flag and convert afterwards.
_COLOR_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)
_DECODES_RGB = _COLOR_FLAG != cv2.IMREAD_COLOR


def read_image(
    path: str | os.PathLike,
    grayscale: bool = False,
    *,
    expected_shape: tuple[int, int] | None = IMAGE_SHAPE,
) -> np.ndarray:
    """Read an image as uint8 RGB (HxWx3) or grey (HxW).

    The shape check matters because masks are decoded at ``expected_shape`` (the 256x1600 Kaggle
    size): an image of another size would otherwise pair with a mask that does not fit it.
    ``expected_shape=None`` accepts any size.
    """
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grayscale else _COLOR_FLAG)
    if image is None:
        reason = "not a readable image file" if path.is_file() else "file not found"
        raise DataError(f"{path}: {reason}")
    if expected_shape is not None and image.shape[:2] != tuple(expected_shape):
        height, width = image.shape[:2]
        raise DataError(
            f"{path}: image is {width}x{height} (WxH), expected {expected_shape[1]}x{expected_shape[0]}"
        )
    if not grayscale and not _DECODES_RGB:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image
