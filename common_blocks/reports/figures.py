"""Pictures of the data and of out-of-fold results, for a person to look at.

Masks are drawn as contours on the image, one row per class that has a true or predicted defect, so
that overlapping classes never hide each other. The truth (red) is a ring just outside its mask and
the prediction (green) a ring just inside its mask: a perfect prediction shows both rings.

Figures are built with matplotlib's object API (``Figure``, no pyplot): nothing touches a GUI backend
or pyplot's global figure list, so this runs headless and figures are freed once dropped; PNGs are
rendered by Agg.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from common_blocks.data import rle
from common_blocks.data.formats import CLASS_IDS, N_CLASSES, RLE_COLUMNS, class_presence
from common_blocks.errors import DataError
from common_blocks.evaluation.oof_stats import OofStats
from common_blocks.evaluation.postprocess import PostprocessConfig
from common_blocks.evaluation.threshold_search import SearchResult, pair_outcomes
from common_blocks.files import atomic_output
from common_blocks.run_folder import TRAIN_LOSS, VAL_LOSS, VAL_SCORE, RunPaths

TRUTH_COLOUR = (255, 0, 0)
PRED_COLOUR = (0, 255, 0)
RING_WIDTH = 2  # pixels; visible when a 1600-wide image is shown ~1300 pixels wide
LABEL_WIDTH = 92  # band left of each row holding its class name, so no label covers the steel
ROW_GAP = 4
BAND_COLOUR = (40, 40, 40)
GAP_COLOUR = (255, 255, 255)
CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
DPI = 100
TRAINING_COLUMNS = (TRAIN_LOSS, VAL_LOSS, VAL_SCORE)


def _ring(mask: np.ndarray, outside: bool) -> np.ndarray:
    """(H, W) bool band of RING_WIDTH pixels along the mask's border, outside or inside it."""
    mask = np.ascontiguousarray(mask != 0).view(np.uint8)
    kernel = np.ones((2 * RING_WIDTH + 1,) * 2, np.uint8)
    if outside:
        return cv2.dilate(mask, kernel) > mask
    return cv2.erode(mask, kernel) < mask


def _label_band(text: str, height: int) -> np.ndarray:
    band = np.full((height, LABEL_WIDTH, 3), BAND_COLOUR, np.uint8)
    cv2.putText(band, text, (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return band


def _check_masks(masks: np.ndarray | None, shape: tuple[int, int], name: str) -> None:
    if masks is not None and masks.shape != (N_CLASSES, *shape):
        raise ValueError(f"{name}: expected shape {(N_CLASSES, *shape)}, got {masks.shape}")


def overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray | None) -> np.ndarray:
    """RGB picture with one row per class that has a true or predicted defect (truth red outside its
    mask, prediction green inside), each labelled with its class; a single row labelled 'none' when no
    class has any. ``truth`` and ``pred`` are (4, H, W), nonzero = defect."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    shape = image.shape[:2]
    _check_masks(truth, shape, "truth")
    _check_masks(pred, shape, "pred")
    rows = []
    for k, class_id in enumerate(CLASS_IDS):
        drawn = [
            (masks[k], outside, colour)
            for masks, outside, colour in ((truth, True, TRUTH_COLOUR), (pred, False, PRED_COLOUR))
            if masks is not None and masks[k].any()
        ]
        if not drawn:
            continue
        row = image.copy()
        for mask, outside, colour in drawn:
            row[_ring(mask, outside)] = colour
        rows.append(np.hstack([_label_band(f"class {class_id}", shape[0]), row]))
    if not rows:
        rows = [np.hstack([_label_band("none", shape[0]), image])]
    gap = np.full((ROW_GAP, rows[0].shape[1], 3), GAP_COLOUR, np.uint8)
    return np.vstack([part for row in rows for part in (gap, row)][1:])


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 array as PNG, atomically."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"could not encode an array of shape {array.shape} as PNG")
    with atomic_output(path) as temporary:
        temporary.write_bytes(encoded.tobytes())
    return Path(path)


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write a figure as PNG, atomically."""
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    return Path(path)


def label_masks(table: pd.DataFrame, image_id: str) -> np.ndarray:
    """(4, 256, 1600) uint8 true masks of one image of a label table."""
    rows = table.loc[table["ImageId"] == image_id, list(RLE_COLUMNS)]
    if len(rows) != 1:
        raise DataError(f"image {image_id} is not in the label table")
    return np.stack([rle.decode(encoded) for encoded in rows.iloc[0]])


def _bar_labels(axes, bars, counts: np.ndarray, total: int) -> None:
    axes.bar_label(bars, labels=[f"{c}\n{100 * c / max(total, 1):.1f}%" for c in counts], fontsize=9)
    axes.margins(y=0.25)


def image_groups(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """(N,) bool membership of 'class 1' .. 'class 4' (images holding the class) and 'defect-free'."""
    presence = class_presence(table)
    groups = {f"class {c}": presence[:, k] for k, c in enumerate(CLASS_IDS)}
    groups["defect-free"] = ~presence.any(axis=1)
    return groups


def class_distribution(table: pd.DataFrame) -> Figure:
    """How many images hold each class (and none), and how many classes an image holds."""
    presence = class_presence(table)
    total = len(table)
    per_class = np.array([member.sum() for member in image_groups(table).values()])
    per_image = np.bincount(presence.sum(axis=1), minlength=N_CLASSES + 1)
    figure = Figure(figsize=(12, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    bars = left.bar(
        [f"class {c}" for c in CLASS_IDS] + ["defect-free"], per_class, color=[*CLASS_COLOURS, "grey"]
    )
    _bar_labels(left, bars, per_class, total)
    left.set_title(f"Images per class ({total} images; an image may hold several classes)")
    bars = right.bar([str(n) for n in range(N_CLASSES + 1)], per_image, color="slategrey")
    _bar_labels(right, bars, per_image, total)
    right.set_title("Number of defect classes per image")
    right.set_xlabel("classes in the image")
    for axes in (left, right):
        axes.set_ylabel("images")
    return figure


def score_vs_threshold(result: SearchResult) -> Figure:
    """Per class, the best mean Dice at each pixel threshold (over min size, min area and gate), with the
    chosen threshold marked: a flat curve means the threshold matters little, a sharp peak that it does."""
    curves = result.threshold_curves()
    figure = Figure(figsize=(14, 3.6), layout="constrained")
    for k, axes in enumerate(figure.subplots(1, N_CLASSES)):
        chosen = result.config.classes[k].threshold
        axes.plot(result.thresholds, curves[k], marker="o", color=CLASS_COLOURS[k])
        axes.axvline(chosen, color="black", linestyle="--", linewidth=1)
        axes.plot([chosen], [result.class_scores[k]], marker="*", markersize=14, color="black")
        axes.set_title(f"class {CLASS_IDS[k]}: t={chosen:g}, Dice {result.class_scores[k]:.4f}")
        axes.set_xlabel("pixel threshold")
        axes.grid(alpha=0.3)
    figure.axes[0].set_ylabel("best mean Dice")
    return figure


def confusion_by_class_count(stats: OofStats, config: PostprocessConfig) -> Figure:
    """Images by true (rows) and predicted (columns) number of defect classes: shows whether the model
    misses defects on busy images or invents them on clean ones."""
    _, predicted = pair_outcomes(stats, config)
    true_count = (stats.truth_area > 0).sum(axis=1)
    counts = np.zeros((N_CLASSES + 1, N_CLASSES + 1), np.int64)
    np.add.at(counts, (true_count, predicted.sum(axis=1)), 1)
    figure = Figure(figsize=(5.6, 4.8), layout="constrained")
    axes = figure.subplots()
    axes.imshow(np.log1p(counts), cmap="Blues")
    for (row, col), value in np.ndenumerate(counts):
        colour = "white" if value > counts.max() / 3 else "black"
        axes.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=10)
    ticks = range(N_CLASSES + 1)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xlabel("predicted classes per image")
    axes.set_ylabel("true classes per image")
    exact = np.trace(counts) / max(stats.n_images, 1)
    axes.set_title(f"{stats.n_images} images, {100 * exact:.1f}% with the right count")
    return figure


def _finished_epochs(paths: RunPaths) -> int | None:
    """Epochs the fit ran, from summary.json; None while the run is unfinished or the file unreadable."""
    try:
        return int(json.loads(paths.summary.read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch means of the training loss, validation loss and score of one fold from its Lightning
    metrics.csv (NaN where a column was not logged; empty when there is no log yet).

    The row Lightning logs when the best checkpoint is validated again after the fit carries the epoch
    after the last one; it repeats the best epoch's figures, so it is dropped."""
    paths = RunPaths(Path(run_dir))
    if not paths.metrics.is_file():
        return pd.DataFrame(columns=list(TRAINING_COLUMNS), index=pd.Index([], name="epoch"))
    try:
        log = pd.read_csv(paths.metrics)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(
            f"{paths.metrics}: not a readable metrics CSV ({str(error).splitlines()[0]})"
        ) from None
    if "epoch" not in log.columns:
        raise DataError(f"{paths.metrics}: no 'epoch' column")
    finished = _finished_epochs(paths)
    if finished is not None:
        log = log[log["epoch"] < finished]
    return log.reindex(columns=["epoch", *TRAINING_COLUMNS]).groupby("epoch").mean()


def training_curves(run_dirs: Sequence[str | os.PathLike]) -> Figure:
    """Loss (train solid, validation dashed) and validation score against epoch, one colour per fold."""
    figure = Figure(figsize=(14, 4), layout="constrained")
    losses, scores = figure.subplots(1, 2)
    for index, run_dir in enumerate(Path(d) for d in run_dirs):
        history = training_history(run_dir)
        colour = f"C{index % 10}"
        label = RunPaths(run_dir).label
        for column, axes, style in (
            (TRAIN_LOSS, losses, "-"),
            (VAL_LOSS, losses, "--"),
            (VAL_SCORE, scores, "-"),
        ):
            values = history[column].dropna()
            if values.empty:
                continue
            axes.plot(values.index, values, style, marker=".", color=colour, label=f"{label} {column}")
    losses.set_title("Loss (solid: train, mean over the epoch's logged steps; dashed: validation)")
    scores.set_title("Validation score (mean Dice)")
    for axes in (losses, scores):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no logged epochs", ha="center", va="center", transform=axes.transAxes)
    return figure
