"""The dataset overview: sample images of every class with their true masks and the class distribution,
on one HTML page, to see what the labels look like before training."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from common_blocks.data.formats import CLASS_IDS, class_presence, read_labels
from common_blocks.data.images import read_image
from common_blocks.errors import DataError
from common_blocks.output_folders import staged_folder
from common_blocks.reports.figures import (
    class_distribution,
    image_groups,
    label_masks,
    overlay,
    save_figure,
    save_png,
)
from common_blocks.reports.html import colour_legend, figure_html, section_html, write_page


def sample_images(table: pd.DataFrame, per_class: int, seed: int = 0) -> dict[str, list[str]]:
    """Up to ``per_class`` random image ids of each group of ``image_groups``."""
    rng = np.random.default_rng(seed)
    ids = table["ImageId"].to_numpy()
    return {
        name: sorted(rng.choice(ids[member], size=min(per_class, int(member.sum())), replace=False).tolist())
        for name, member in image_groups(table).items()
    }


def _classes_text(table: pd.DataFrame, image_id: str) -> str:
    present = class_presence(table[table["ImageId"] == image_id])[0]
    return ", ".join(str(c) for c, p in zip(CLASS_IDS, present, strict=True) if p) or "none"


def dataset_overview(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, per_class: int = 4, seed: int = 0
) -> Path:
    """Write sample images of every class with their true masks, the class distribution and an index.html
    listing them into ``out_dir``; returns the page. ``data_dir`` holds train.csv and train_images/.

    The files appear in ``out_dir`` together or not at all (``output_folders.staged_folder``)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    images_dir = data_dir / "train_images"
    table = read_labels(data_dir / "train.csv", images_dir)
    with staged_folder(out_dir, "the overview folder") as staging:
        _write_overview(table, data_dir, images_dir, staging, per_class, seed)
    return out_dir / "index.html"


def _write_overview(
    table: pd.DataFrame, data_dir: Path, images_dir: Path, out_dir: Path, per_class: int, seed: int
) -> Path:
    sections = [
        section_html(
            "Class distribution",
            figure_html(save_figure(class_distribution(table), out_dir / "class_distribution.png").name),
        )
    ]
    samples = sample_images(table, per_class, seed)
    counts = {name: int(member.sum()) for name, member in image_groups(table).items()}
    progress = tqdm(total=sum(map(len, samples.values())), desc="samples", unit="img", disable=None)
    for group, image_ids in samples.items():
        figures = []
        for image_id in image_ids:
            picture = overlay(read_image(images_dir / image_id), label_masks(table, image_id), None)
            name = f"{group.replace(' ', '').replace('-', '_')}_{Path(image_id).stem}.png"
            save_png(picture, out_dir / name)
            figures.append(figure_html(name, f"{image_id} (classes: {_classes_text(table, image_id)})"))
            progress.update()
        intro = f'<p class="note">{counts[group]} images; showing {len(image_ids)}.</p>'
        sections.append(section_html(group, intro + "".join(figures)))
    progress.close()
    body = (
        f'<p class="note">{len(table)} train images of {html.escape(str(data_dir))}.</p>'
        + colour_legend(with_prediction=False)
        + "".join(sections)
    )
    return write_page(out_dir, "Dataset overview", body)
