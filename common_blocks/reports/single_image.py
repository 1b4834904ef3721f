"""One image's prediction, for looking at: predicted classes with their areas, and the masks drawn on it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from common_blocks.data import rle
from common_blocks.data.datasets import to_tensor
from common_blocks.data.formats import CLASS_IDS, RLE_COLUMNS, read_labels
from common_blocks.data.images import read_image
from common_blocks.inference.predictor import EMPTY_RLES, EnsemblePredictor
from common_blocks.reports.figures import overlay as draw_overlay
from common_blocks.reports.figures import save_png


def truth_rles(labels: str | os.PathLike, image_id: str) -> tuple[str, ...]:
    """The image's four true RLE strings; an image the file does not list has no defect."""
    table = read_labels(labels)
    row = table.loc[table["ImageId"] == image_id]
    return EMPTY_RLES if row.empty else tuple(row.iloc[0][list(RLE_COLUMNS)])


def decoded(rles: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """(4, H, W) uint8 masks of four RLE strings."""
    return np.stack([rle.decode(encoded, shape) for encoded in rles])


def describe(rles: Sequence[str], who: str) -> str:
    found = [f"class {c}: {rle.area(e)} px" for c, e in zip(CLASS_IDS, rles, strict=True) if e]
    return f"{who}: {', '.join(found) if found else 'no defect'}"


def show_prediction(
    predictor: EnsemblePredictor,
    image_path: str | os.PathLike,
    overlay: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
) -> str:
    """Predict one image; write the overlay PNG when asked (``figures.overlay``: one row per class,
    the prediction green inside its mask, the truth red outside it).

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
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image
        truth_masks = None if true_rles is None else decoded(true_rles, rgb.shape[:2])
        save_png(draw_overlay(rgb, truth_masks, decoded(predicted, rgb.shape[:2])), overlay)
        lines.append(f"wrote {overlay}")
    return "\n".join(lines)
