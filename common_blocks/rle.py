"""Kaggle run-length encoding of defect masks, compiled with numba.

Convention: pixels are numbered from 1, top to bottom and then left to right (column-major over
the HxW image), and a mask is written as space-separated ``start length`` pairs. Decoding checks
the string fully, because a malformed label silently corrupts training and scoring.
"""

from __future__ import annotations

import numba
import numpy as np

IMAGE_SHAPE = (256, 1600)

_OK = 0
_NOT_INTEGER = 1
_ODD_COUNT = 2
_BAD_START = 3
_BAD_LENGTH = 4
_BEYOND_IMAGE = 5
_UNSORTED = 6
_SPACE, _TAB, _NEWLINE, _RETURN, _ZERO, _NINE = 32, 9, 10, 13, 48, 57


@numba.njit(cache=True, nogil=True)
def _encode_runs(mask: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    runs = np.empty(height * width + 1, dtype=np.int64)
    n_values = 0
    inside = False
    pixel = 0
    for col in range(width):
        for row in range(height):
            pixel += 1
            if mask[row, col] != 0:
                if not inside:
                    runs[n_values] = pixel
                    n_values += 1
                    inside = True
            elif inside:
                runs[n_values] = pixel - runs[n_values - 1]
                n_values += 1
                inside = False
    if inside:
        runs[n_values] = pixel + 1 - runs[n_values - 1]
        n_values += 1
    return runs[:n_values]


@numba.njit(cache=True, nogil=True)
def _format_numbers(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size * 21, dtype=np.uint8)
    digits = np.empty(20, dtype=np.uint8)
    pos = 0
    for i in range(values.size):
        if i > 0:
            out[pos] = _SPACE
            pos += 1
        value = values[i]
        n_digits = 0
        while True:
            digits[n_digits] = _ZERO + value % 10
            n_digits += 1
            value //= 10
            if value == 0:
                break
        for k in range(n_digits - 1, -1, -1):
            out[pos] = digits[k]
            pos += 1
    return out[:pos]


@numba.njit(cache=True, nogil=True)
def _decode_into(text: np.ndarray, height: int, width: int, mask: np.ndarray, fill: bool) -> tuple[int, int]:
    """Parse the RLE bytes, filling ``mask`` when ``fill``; return (error code, offending pair)."""
    n_pixels = height * width
    n_tokens = 0
    value = 0
    in_token = False
    start = 0
    previous_end = 0
    for i in range(text.size + 1):
        char = text[i] if i < text.size else _SPACE
        if _ZERO <= char <= _NINE:
            value = value * 10 + (char - _ZERO)
            in_token = True
            if value > n_pixels + 1:
                value = n_pixels + 1
            continue
        if char != _SPACE and char != _TAB and char != _NEWLINE and char != _RETURN:
            return _NOT_INTEGER, n_tokens // 2
        if not in_token:
            continue
        if n_tokens % 2 == 0:
            start = value
            if start < 1:
                return _BAD_START, n_tokens // 2
            if start <= previous_end:
                return _UNSORTED, n_tokens // 2
        else:
            length = value
            if length < 1:
                return _BAD_LENGTH, n_tokens // 2
            end = start + length - 1
            if end > n_pixels:
                return _BEYOND_IMAGE, n_tokens // 2
            if fill:
                for pixel in range(start - 1, end):
                    mask[pixel % height, pixel // height] = 1
            previous_end = end
        n_tokens += 1
        value = 0
        in_token = False
    if n_tokens % 2 == 1:
        return _ODD_COUNT, n_tokens // 2
    return _OK, 0


_MESSAGES = {
    _NOT_INTEGER: "a value that is not a non-negative integer in pair {pair}",
    _ODD_COUNT: "an odd number of values (the last start has no length)",
    _BAD_START: "start 0 in pair {pair} (pixels are numbered from 1)",
    _BAD_LENGTH: "a zero length in pair {pair}",
    _BEYOND_IMAGE: "run {pair} ends beyond the {height}x{width} image",
    _UNSORTED: "run {pair} starts before the previous run ends (runs must be sorted and disjoint)",
}


def encode(mask: np.ndarray) -> str:
    """Encode an HxW mask (nonzero = defect) as a Kaggle RLE string; '' for an empty mask."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects an HxW mask, got shape {mask.shape}")
    runs = _encode_runs(mask.view(np.uint8) if mask.dtype == np.bool_ else mask)
    if runs.size == 0:
        return ""
    return _format_numbers(runs).tobytes().decode("ascii")


def _parse(rle: str, shape: tuple[int, int], mask: np.ndarray, fill: bool) -> None:
    text = np.frombuffer(rle.encode("ascii", errors="replace"), dtype=np.uint8)
    height, width = shape
    code, pair = _decode_into(text, height, width, mask, fill)
    if code != _OK:
        detail = _MESSAGES[code].format(pair=pair + 1, height=height, width=width)
        raise ValueError(f"invalid RLE: {detail}")


def decode(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Decode a Kaggle RLE string into an HxW uint8 mask of 0/1; '' gives an empty mask."""
    mask = np.zeros(shape, dtype=np.uint8)
    if rle:
        _parse(rle, shape, mask, fill=True)
    return mask


_NO_MASK = np.zeros((1, 1), dtype=np.uint8)


def check(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> None:
    """Raise ValueError when ``rle`` is not a valid mask of ``shape``, without building the mask."""
    if rle:
        _parse(rle, shape, _NO_MASK, fill=False)


def area(rle: str) -> int:
    """Number of defect pixels of an RLE string, without decoding it (assumes a valid string)."""
    if not rle:
        return 0
    return int(np.asarray(rle.split()[1::2], dtype=np.int64).sum())
