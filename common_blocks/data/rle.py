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
def _transitions(mask: np.ndarray, words: np.ndarray) -> np.ndarray:
    """0-based column-major positions p where pixel p differs from pixel p-1 (pixel -1 and N are 0).

    The scan reads the C-ordered mask row by row, comparing each row with the one above eight
    pixels at a time, so it touches memory in order and skips unchanged stretches quickly.
    """
    height, width = mask.shape
    found = np.empty(height * width + 1, dtype=np.int64)
    n_found = 0
    for col in range(width):  # the top pixel of a column follows the bottom one of the previous column
        above = mask[height - 1, col - 1] != 0 if col > 0 else False
        if (mask[0, col] != 0) != above:
            found[n_found] = col * height
            n_found += 1
    n_words = words.shape[1]
    for row in range(1, height):
        for word in range(n_words):
            if words[row, word] == words[row - 1, word]:
                continue
            for col in range(word * 8, word * 8 + 8):
                if (mask[row, col] != 0) != (mask[row - 1, col] != 0):
                    found[n_found] = col * height + row
                    n_found += 1
        for col in range(n_words * 8, width):
            if (mask[row, col] != 0) != (mask[row - 1, col] != 0):
                found[n_found] = col * height + row
                n_found += 1
    if mask[height - 1, width - 1] != 0:
        found[n_found] = height * width
        n_found += 1
    return np.sort(found[:n_found])


_ALL_ONES = np.uint64(0x0101010101010101)


@numba.njit(cache=True, nogil=True)
def _flat_transitions(flat: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Transitions of a column-major flat mask, skipping eight-pixel words that are all 0 or all 1."""
    found = np.empty(flat.size + 1, dtype=np.int64)
    n_found = 0
    previous = False
    for word in range(words.size):
        value = words[word]
        if (value == 0 and not previous) or (value == _ALL_ONES and previous):
            continue
        for pixel in range(word * 8, word * 8 + 8):
            current = flat[pixel] != 0
            if current != previous:
                found[n_found] = pixel
                n_found += 1
                previous = current
    for pixel in range(words.size * 8, flat.size):
        current = flat[pixel] != 0
        if current != previous:
            found[n_found] = pixel
            n_found += 1
            previous = current
    if previous:
        found[n_found] = flat.size
        n_found += 1
    return found[:n_found]


def _encode_runs(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    if mask.flags.f_contiguous:  # the layout decode returns: scan the runs in memory order
        flat = mask.T.reshape(-1)
        edges = _flat_transitions(flat, flat[: flat.size // 8 * 8].view(np.uint64))
    else:
        mask = np.ascontiguousarray(mask)
        whole_words = mask.shape[1] // 8 * 8
        edges = _transitions(mask, np.ascontiguousarray(mask[:, :whole_words]).view(np.uint64))
    runs = np.empty_like(edges)
    runs[0::2] = edges[0::2] + 1
    runs[1::2] = edges[1::2] - edges[0::2]
    return runs


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
    """Parse the RLE bytes, filling the flat column-major ``mask`` when ``fill``.

    Returns (error code, index of the offending pair).
    """
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
                mask[start - 1 : end] = 1
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
    runs = _encode_runs(mask if mask.dtype in (np.bool_, np.uint8) else mask != 0)
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
    """Decode a Kaggle RLE string into an HxW uint8 mask of 0/1; '' gives an empty mask.

    The result is column-major (Fortran-ordered), the layout the runs are written in: filling it
    touches only the memory of the runs. ``np.ascontiguousarray`` gives C order where a library
    needs it.
    """
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    if rle:
        _parse(rle, shape, flat, fill=True)
    return flat.reshape(shape[1], shape[0]).T


_NO_MASK = np.zeros(1, dtype=np.uint8)


def check(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> None:
    """Raise ValueError when ``rle`` is not a valid mask of ``shape``, without building the mask."""
    if rle:
        _parse(rle, shape, _NO_MASK, fill=False)


def area(rle: str) -> int:
    """Number of defect pixels of an RLE string, without decoding it (assumes a valid string)."""
    if not rle:
        return 0
    return int(np.asarray(rle.split()[1::2], dtype=np.int64).sum())
