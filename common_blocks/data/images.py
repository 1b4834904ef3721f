"""Reading steel images with OpenCV, checked, so a bad file fails with its name instead of deep in a batch
and no decoder warning reaches the terminal."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

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

    OpenCV's ``imread`` prints a warning for a missing file, and libpng one for a PNG cut short: a
    complete PNG ends with its IEND chunk (zero padding after it allowed). A JPEG is checked as it
    decodes (``_DecoderOutput``): bytes after its end-of-image marker are ignored, as libjpeg does.
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
    if data.startswith(PNG_START) and not _ends_with(data, PNG_END):
        raise DataError(f"{path}: not a readable image file (truncated PNG: no IEND chunk)")
    return data


class _DecoderOutput:
    """What the C decoders print while OpenCV decodes, kept from the terminal and returned.

    libjpeg decodes a JPEG whose scan is cut short (an interrupted copy, with or without an
    end-of-image marker after the cut) as grey below the cut and only warns, with ``fprintf`` to
    the process's stderr; neither OpenCV nor Pillow lets the caller see its warnings (Pillow drops
    them). So each decode runs with file descriptor 2 pointed at a scratch file of this process,
    which must stay empty. A lock keeps the threads of a process from redirecting at once; a forked
    process (a DataLoader worker) starts with its own lock and scratch file.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scratch: IO[bytes] | None = None

    def decode(self, data: bytes, flags: int) -> tuple[np.ndarray | None, str]:
        """``cv2.imdecode(data, flags)`` and what the decoders printed meanwhile ('' when nothing)."""
        buffer = np.frombuffer(data, np.uint8)
        with self.lock:
            if self.scratch is None:
                self.scratch = tempfile.TemporaryFile()  # noqa: SIM115 (open for the process's life)
            scratch = self.scratch.fileno()
            if sys.stderr is not None:
                sys.stderr.flush()  # what Python has buffered goes where it was meant to
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all: nothing could reach a terminal
                return cv2.imdecode(buffer, flags), ""
            os.dup2(scratch, 2)
            try:
                image = cv2.imdecode(buffer, flags)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            size = os.lseek(scratch, 0, os.SEEK_CUR)
            if not size:
                return image, ""
            os.lseek(scratch, 0, os.SEEK_SET)
            printed = os.read(scratch, size)
            os.ftruncate(scratch, 0)
        return image, printed.decode("utf-8", "replace").strip()


_DECODER = _DecoderOutput()


def _own_decoder_after_fork() -> None:
    """A forked child may have copied the lock held by another thread, and shares the scratch file's offset."""
    global _DECODER
    _DECODER = _DecoderOutput()


os.register_at_fork(after_in_child=_own_decoder_after_fork)


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
    image, printed = _DECODER.decode(data, cv2.IMREAD_GRAYSCALE if grayscale else _COLOR_FLAG)
    if printed:
        kind = "JPEG" if data.startswith(JPEG_START) else "image"
        raise DataError(f"{path}: not a readable image file (damaged {kind}: {printed.splitlines()[0]})")
    if image is None:
        if data.startswith(JPEG_START) and not _ends_with(data, JPEG_END):
            # OpenCV gives up on a JPEG cut short without a warning; bytes after a whole one decode fine
            raise DataError(f"{path}: not a readable image file (truncated JPEG: no end-of-image marker)")
        raise DataError(f"{path}: not a readable image file")
    if expected_shape is not None and image.shape[:2] != tuple(expected_shape):
        height, width = image.shape[:2]
        raise DataError(
            f"{path}: image is {width}x{height} (WxH), expected {expected_shape[1]}x{expected_shape[0]}"
        )
    if not grayscale and not _DECODES_RGB:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image
