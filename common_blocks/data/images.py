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


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC, the last bytes of every PNG


def _ends_with(data: bytes, marker: bytes) -> bool:
    """Whether ``data`` ends with ``marker``, zero bytes after it allowed (copied only when there are some)."""
    return (data.rstrip(b"\x00") if data.endswith(b"\x00") else data).endswith(marker)


def _image_bytes(path: Path) -> bytes:
    """The bytes of an image file, checked before any decoder sees them.

    OpenCV's ``imread`` prints a warning for a missing file, and libjpeg decodes a JPEG cut short
    (an interrupted copy) as grey below the cut, warning only on stderr: a complete JPEG ends with
    the end-of-image marker (zero padding after it is allowed), a complete PNG with its IEND chunk.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: not a readable image file (a directory)") from None
    except OSError as error:
        raise DataError(f"{path}: not a readable image file ({error.strerror or error})") from None
    if not data:
        raise DataError(f"{path}: not a readable image file (empty file)")
    if data.startswith(JPEG_START) and not _ends_with(data, JPEG_END):
        raise DataError(f"{path}: not a readable image file (truncated JPEG: no end-of-image marker)")
    if data.startswith(PNG_START) and not _ends_with(data, PNG_END):
        raise DataError(f"{path}: not a readable image file (truncated PNG: no IEND chunk)")
    return data


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
    data = _image_bytes(path)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grayscale else _COLOR_FLAG)
    if image is None:
        raise DataError(f"{path}: not a readable image file")
    if expected_shape is not None and image.shape[:2] != tuple(expected_shape):
        height, width = image.shape[:2]
        raise DataError(
            f"{path}: image is {width}x{height} (WxH), expected {expected_shape[1]}x{expected_shape[0]}"
        )
    if not grayscale and not _DECODES_RGB:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image
