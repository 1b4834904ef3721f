"""One image's prediction, for looking at: predicted classes with their areas, and contours drawn on it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from common_blocks import rle
from common_blocks.datasets import to_tensor
from common_blocks.errors import DataError
from common_blocks.files import atomic_output
from common_blocks.formats import CLASS_IDS, RLE_COLUMNS, read_labels
from common_blocks.images import read_image
from common_blocks.predict import EMPTY_RLES, EnsemblePredictor

PREDICTED_BGR = (0, 255, 0)
TRUTH_BGR = (0, 0, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def truth_rles(labels: str | os.PathLike, image_id: str) -> tuple[str, ...]:
    """The image's four true RLE strings; an image the file does not list has no defect."""
    table = read_labels(labels)
    row = table.loc[table["ImageId"] == image_id]
    return EMPTY_RLES if row.empty else tuple(row.iloc[0][list(RLE_COLUMNS)])


def draw_masks(canvas: np.ndarray, rles: Sequence[str], colour: tuple[int, int, int], above: bool) -> None:
    """Outline each class's mask on the BGR ``canvas`` and write its class id beside each region
    (above it for predictions, below for the truth, so the two labels do not cover each other)."""
    for class_id, encoded in zip(CLASS_IDS, rles, strict=True):
        if not encoded:
            continue
        mask = np.ascontiguousarray(rle.decode(encoded, canvas.shape[:2]))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, 2)
        for contour in contours:
            x, y, _, height = cv2.boundingRect(contour)
            text_y = max(y - 4, 12) if above else min(y + height + 14, canvas.shape[0] - 2)
            cv2.putText(canvas, str(class_id), (x, text_y), _FONT, 0.5, colour, 1, cv2.LINE_AA)


def describe(rles: Sequence[str], who: str) -> str:
    found = [f"class {c}: {rle.area(e)} px" for c, e in zip(CLASS_IDS, rles, strict=True) if e]
    return f"{who}: {', '.join(found) if found else 'no defect'}"


def show_prediction(
    predictor: EnsemblePredictor,
    image_path: str | os.PathLike,
    overlay: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
) -> str:
    """Predict one image; write the overlay PNG (predicted contours green, true ones red) when asked.

    Returns the lines to print: the predicted classes with their areas, and the true ones with ``truth``.
    """
    image_path = Path(image_path)
    image = read_image(image_path, grayscale=predictor.grayscale)
    predicted = predictor.predict(to_tensor(image)[None])[0]
    lines = [describe(predicted, f"{image_path.name} predicted")]
    true_rles = None if truth is None else truth_rles(truth, image_path.name)
    if true_rles is not None:
        lines.append(describe(true_rles, f"{image_path.name} truth"))
    if overlay is not None:
        canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
        if true_rles is not None:
            draw_masks(canvas, true_rles, TRUTH_BGR, above=False)
        draw_masks(canvas, predicted, PREDICTED_BGR, above=True)
        ok, encoded = cv2.imencode(".png", canvas)
        if not ok:
            raise DataError(f"{overlay}: could not encode the overlay as PNG")
        with atomic_output(overlay) as temporary:
            temporary.write_bytes(encoded.tobytes())
        lines.append(f"wrote {overlay}")
    return "\n".join(lines)
