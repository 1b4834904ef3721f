"""The validation report: one HTML page to judge a model's out-of-fold results before submitting.

It shows the class distribution, the local CV score with the chosen post-processing, how the score
depends on the pixel threshold, the confusion of the number of defect classes per image, the
worst-scored images with truth and prediction drawn on them, and the training curves of every fold.
Everything but the worst images' masks comes from plain inputs (labels, OOF statistics, the search
result, run folders), so the page is rebuilt without a model; ``worst_images`` ranks the images
from the statistics so that the caller predicts masks for those few images only.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from common_blocks.data.formats import CLASS_IDS
from common_blocks.data.images import read_image
from common_blocks.evaluation.metric import ScoreSummary
from common_blocks.evaluation.oof_stats import OofStats
from common_blocks.evaluation.postprocess import PostprocessConfig
from common_blocks.evaluation.threshold_search import SearchResult, pair_outcomes
from common_blocks.output_folders import staged_folder
from common_blocks.reports.figures import (
    class_distribution,
    confusion_by_class_count,
    label_masks,
    overlay,
    save_figure,
    save_png,
    score_vs_threshold,
    training_curves,
)
from common_blocks.reports.html import colour_legend, figure_html, section_html, write_page
from common_blocks.run_folder import RunPaths


@dataclass(frozen=True)
class WorstImage:
    """A badly scored validation image and its predicted masks under the chosen post-processing."""

    image_id: str
    score: float  # mean Dice over the image's four classes
    pred: np.ndarray  # (4, H, W) uint8


def worst_images(stats: OofStats, config: PostprocessConfig, k: int) -> list[tuple[str, float]]:
    """The ``k`` images of lowest mean Dice under ``config``, worst first, as (image id, mean Dice)."""
    dice, _ = pair_outcomes(stats, config)
    mean = dice.mean(axis=1)
    return [(str(stats.image_ids[i]), float(mean[i])) for i in np.argsort(mean, kind="stable")[:k]]


def _table_html(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cv_html(summary: ScoreSummary, config: PostprocessConfig) -> str:
    """The overall figures, then per class its Dice and chosen settings."""
    overall = _table_html(
        ("CV score", "positive-pair Dice", "false-positive pairs", "false-negative pairs", "images"),
        [
            (
                f"{summary.score:.5f}",
                f"{summary.positive_dice:.4f}",
                summary.false_positive_pairs,
                summary.false_negative_pairs,
                summary.n_images,
            )
        ],
    )
    per_class = _table_html(
        ("class", "Dice", *config.classes[0].rendered()),
        [
            (f"class {c}", f"{summary.per_class[str(c)]:.4f}", *cfg.rendered().values())
            for c, cfg in zip(CLASS_IDS, config.classes, strict=True)
        ],
    )
    return overall + per_class


def _worst_html(
    out_dir: Path,
    worst: Sequence[WorstImage],
    table: pd.DataFrame,
    images_dir: Path,
    class_dice: dict[str, np.ndarray],
) -> str:
    """Write each worst image's overlay beside the page; the figures captioned with their Dice."""
    figures = []
    for rank, item in enumerate(tqdm(worst, desc="overlays", unit="img", disable=None), start=1):
        if item.image_id not in class_dice:
            raise ValueError(f"worst image {item.image_id} is not in the OOF stats")
        picture = overlay(
            read_image(images_dir / item.image_id), label_masks(table, item.image_id), item.pred
        )
        name = f"worst_{rank:03d}_{Path(item.image_id).stem}.png"
        save_png(picture, out_dir / name)
        per_class = ", ".join(
            f"class {c} {d:.2f}" for c, d in zip(CLASS_IDS, class_dice[item.image_id], strict=True)
        )
        figures.append(
            figure_html(name, f"#{rank} {item.image_id}: mean Dice {item.score:.3f} ({per_class})")
        )
    return colour_legend(with_prediction=True) + "".join(figures)


def _training_html(out_dir: Path, run_dirs: Sequence[str | os.PathLike]) -> str:
    """The curves of every fold, naming the folds that have no log (yet)."""
    if not run_dirs:
        return '<p class="note">No run folders were given.</p>'
    curves = save_figure(training_curves(run_dirs), out_dir / "training_curves.png")
    unlogged = [paths.label for paths in map(RunPaths, map(Path, run_dirs)) if not paths.metrics.is_file()]
    note = f'<p class="note">No metrics.csv in {html.escape(", ".join(unlogged))}.</p>' if unlogged else ""
    return note + figure_html(curves.name)


def build_report(
    out_dir: str | os.PathLike,
    *,
    title: str,
    table: pd.DataFrame,
    stats: OofStats,
    result: SearchResult,
    run_dirs: Sequence[str | os.PathLike],
    images_dir: str | os.PathLike,
    worst: Sequence[WorstImage] | None,
    cv_summary: ScoreSummary,
) -> Path:
    """Write the report into ``out_dir``, whole or not at all: its files are written into a staging
    folder beside it and moved in only when all are written (``index.html`` last), so that a failure
    leaves an earlier report there as it was and a page never links a missing file. ``table`` holds
    the labels of the OOF images and ``worst`` the images to draw (see ``worst_images``); returns the
    page."""
    with staged_folder(out_dir, "the report folder") as staging:
        config = result.config
        folds = sorted(set(stats.folds.tolist()))
        intro = (
            f'<p class="note">{stats.n_images} out-of-fold images, folds {", ".join(map(str, folds))}; '
            f"classifier gate: {'yes' if stats.has_gate else 'none'}.</p>"
        )
        plots = (
            ("Class distribution", "class_distribution.png", class_distribution(table)),
            ("Score against pixel threshold", "score_vs_threshold.png", score_vs_threshold(result)),
            (
                "Number of defect classes per image",
                "confusion_class_count.png",
                confusion_by_class_count(stats, config),
            ),
        )
        sections = [intro, section_html("Local CV", _cv_html(cv_summary, config))]
        sections += [
            section_html(heading, figure_html(save_figure(fig, staging / name).name))
            for heading, name, fig in plots
        ]
        if worst is None:
            worst_body = '<p class="note">Not rendered (no predicted masks were given).</p>'
        else:
            class_dice = dict(zip(stats.image_ids.tolist(), pair_outcomes(stats, config)[0], strict=True))
            worst_body = _worst_html(staging, worst, table, Path(images_dir), class_dice)
        sections.append(section_html("Worst-scored validation images", worst_body))
        sections.append(section_html("Training curves", _training_html(staging, run_dirs)))
        write_page(staging, title, "".join(sections))
    return Path(out_dir) / "index.html"
