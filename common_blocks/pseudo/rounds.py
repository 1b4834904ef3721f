"""One pseudo-labelling round: the ensemble predicts every image of a folder (the test images by
default), the selection rule keeps the sure ones, class by class where image-level labels say which
classes each image holds.

Outputs ``OUT_DIR/round<R>.csv`` (format in ``common_blocks.pseudo.selection``) and ``OUT_DIR/round<R>_summary.json``,
both written atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from common_blocks.data import rle
from common_blocks.data.formats import (
    CLASS_IDS,
    IGNORED_COLUMNS,
    PRESENCE_COLUMNS,
    RLE_COLUMNS,
    list_images,
    write_pseudo_labels,
)
from common_blocks.errors import ConfigError
from common_blocks.files import staged_outputs
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.options import PredictOptions
from common_blocks.inference.predictor import EnsemblePredictor, Runtime, build_predictor
from common_blocks.inference.submission import ReadTolerantDataset, image_loader
from common_blocks.pseudo.selection import SelectionSummary

GATE_COLUMNS = tuple(f"p{class_id}" for class_id in CLASS_IDS)  # gate probabilities in the predictions


def round_path(out_dir: str | os.PathLike, round_number: int, suffix: str = ".csv") -> Path:
    """``OUT_DIR/round<R>.csv`` and its companions (``_summary.json``)."""
    return Path(out_dir) / f"round{round_number}{suffix}"


def folder_loader(
    images_dir: Path, grayscale: bool, batch_size: int, workers: int | None, device: torch.device
) -> DataLoader:
    """Every image of the folder, unaugmented and normalised as in training; unreadable ones flagged."""
    table = pd.DataFrame({"ImageId": list_images(images_dir)})
    dataset = ReadTolerantDataset(table, images_dir, grayscale=grayscale, with_masks=False)
    return image_loader(dataset, batch_size, workers, device)


def predict_and_select(
    predictor: EnsemblePredictor,
    loader: DataLoader,
    summary: SelectionSummary,
    image_labels: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Every readable image's label row as the round writes it, gate probabilities ``p1``..``p4`` and
    ``kept`` (the rule's verdict), and the read errors.

    With ``image_labels`` (a presence table over the folder: ``formats.read_weak_labels``) the rows are
    class-aware (``SelectionSummary.add_labelled``): a class the image does not hold, or one left out
    (``ignored_1`` .. ``ignored_4``), has an empty mask.

    An unreadable image is left out, not an error: it cannot be trained on, and one bad file should
    not cost the round.
    """
    held = None if image_labels is None else image_labels.set_index("ImageId")[list(PRESENCE_COLUMNS)]
    rows, unreadable = [], []
    for batch in loader:
        readable = np.array([not error for error in batch["error"]])
        unreadable += [error for error in batch["error"] if error]
        if not readable.any():
            continue
        gate_probs, masks = predictor.predict_masks(batch["image"][torch.from_numpy(readable)])
        image_ids = np.array(batch["image_id"])[readable]
        for image_id, image_gate, image_masks in zip(image_ids, gate_probs, masks, strict=True):
            if held is None:
                kept = summary.add(image_gate, image_masks)
                rows.append((str(image_id), *(rle.encode(mask) for mask in image_masks), *image_gate, kept))
                continue
            labels = held.loc[str(image_id)].to_numpy(dtype=bool)
            kept, ignored = summary.add_labelled(image_gate, image_masks, labels)
            written = image_masks * (labels & ~ignored)[:, None, None].astype(image_masks.dtype)
            rows.append((str(image_id), *(rle.encode(mask) for mask in written), *ignored, *image_gate, kept))
    extra = [] if held is None else list(IGNORED_COLUMNS)
    columns = ["ImageId", *RLE_COLUMNS, *extra, *GATE_COLUMNS, "kept"]
    return pd.DataFrame(rows, columns=columns), unreadable


def pseudo_label_round(
    cfg: EnsembleConfig,
    round_number: int,
    out_dir: str | os.PathLike,
    summary: SelectionSummary,
    options: PredictOptions = PredictOptions(),
    device: str | None = None,
    runtime: Runtime | None = None,
    images_dir: Path | None = None,
    image_labels: pd.DataFrame | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Run the round over ``images_dir`` (default: the ensemble's ``test_images``), write its label
    file and summary; returns the summary and every prediction.

    The rule needs the classifier's probabilities, so an ensemble without a gate is an error (before
    any checkpoint loads); ``build_predictor`` lists missing checkpoints. ``options`` say how images are
    loaded and at which precision the networks run; ``device`` and ``runtime`` are ``build_predictor``'s:
    where and by which backend they run. ``image_labels``: the folder's presence table, for class-aware
    labels (``summary.on_unsure`` says what an unsure class does).
    """
    if cfg.gate is None:
        raise ConfigError(
            f"ensemble {cfg.name}: pseudo-labelling needs a classifier gate (the `gate:` section)"
        )
    start = time.perf_counter()
    postprocess, source = cfg.resolved_postprocess()
    predictor = build_predictor(
        cfg, postprocess=postprocess, device=device, precision=options.precision, runtime=runtime
    )
    images_dir = Path(cfg.data_dir) / "test_images" if images_dir is None else images_dir
    loader = folder_loader(
        images_dir,
        predictor.grayscale,
        options.batch_size,
        options.workers,
        predictor.device,
    )
    predictions, unreadable = predict_and_select(predictor, loader, summary, image_labels)
    labels = round_path(out_dir, round_number)
    report = {
        "round": round_number,
        "ensemble": cfg.name,
        "ensemble_digest": cfg.digest(),
        "postprocess": source,
        "images": str(images_dir),
        "labels": str(labels),
        **summary.to_dict(),
        "unreadable_images": unreadable,
        "seconds": round(time.perf_counter() - start, 1),
    }
    with staged_outputs() as outputs:  # the labels and their summary appear together or not at all
        with outputs.file(labels, "the pseudo-labels") as temporary:
            columns = ["ImageId", *RLE_COLUMNS, *(IGNORED_COLUMNS if image_labels is not None else ())]
            write_pseudo_labels(predictions.loc[predictions["kept"], columns], temporary)
        with outputs.file(
            round_path(out_dir, round_number, "_summary.json"), "the round summary"
        ) as temporary:
            temporary.write_text(json.dumps(report, indent=2))
    return report, predictions
