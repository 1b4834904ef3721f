"""A submission from a folder of test images, streamed: one batch of images in memory at a time, and per
image only its four RLE strings kept until the checked table is written, atomically, at the end."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common_blocks.data import rle
from common_blocks.data.datasets import SegmentationDataset
from common_blocks.data.formats import (
    RLE_COLUMNS,
    SubmissionFormat,
    list_images,
    read_image_ids,
    write_submission,
)
from common_blocks.data.rle import IMAGE_SHAPE
from common_blocks.errors import ConfigError, DataError
from common_blocks.inference.options import PredictOptions
from common_blocks.inference.predictor import EMPTY_RLES, EnsemblePredictor

GPU_DECODE_WORKERS = 2


class ReadTolerantDataset(SegmentationDataset):
    """SegmentationDataset items plus ``error``: '' or why the image could not be read (then zeros).

    A read error is returned instead of raised: raised in a DataLoader worker it would come back as a
    multi-line traceback and end the loader, while the caller wants to stop with one line naming the
    file, or to skip the image and go on.
    """

    def __getitem__(self, index: int) -> dict:
        try:
            return {**super().__getitem__(index), "error": ""}
        except DataError as error:
            item = {
                "image": torch.zeros(1 if self.grayscale else 3, *IMAGE_SHAPE),
                "image_id": self.image_ids[index],
                "index": index,
                "error": str(error),
            }
            if self.with_masks:
                item["mask"] = torch.zeros(len(RLE_COLUMNS), *IMAGE_SHAPE, dtype=torch.uint8)
            return item


@dataclass(frozen=True)
class PredictedImage:
    image_id: str
    rles: tuple[str, str, str, str]
    error: str  # '' when the image was read


def predict_stream(predictor: EnsemblePredictor, batches: Iterable[dict]) -> Iterator[PredictedImage]:
    """Predict batches of ``ReadTolerantDataset`` items lazily, one batch at a time; unreadable images
    get empty masks and their error."""
    for batch in batches:
        readable = [i for i, error in enumerate(batch["error"]) if not error]
        images = batch["image"] if len(readable) == len(batch["error"]) else batch["image"][readable]
        predicted = dict(zip(readable, predictor.predict(images) if readable else [], strict=True))
        for i, (image_id, error) in enumerate(zip(batch["image_id"], batch["error"], strict=True)):
            yield PredictedImage(image_id, predicted.get(i, EMPTY_RLES), error)


def image_loader(
    dataset: ReadTolerantDataset, batch_size: int, workers: int | None, device: torch.device
) -> DataLoader:
    """Batches in dataset order. ``workers=None`` decodes in this process when the model runs on the
    CPU: a worker process takes cores from the model's threads (on 2 cores, 11 instead of 20 img/s
    end to end) and glibc's per-thread arenas then grow this process's RSS by ~0.5 GB. With a GPU,
    2 worker processes decode."""
    if workers is None:
        workers = GPU_DECODE_WORKERS if device.type == "cuda" else 0
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")


def submission_image_ids(data_dir: str | os.PathLike) -> list[str]:
    """Test ids in the order of DATA_DIR/sample_submission.csv, else the images of DATA_DIR/test_images.

    An empty or missing image folder is an error either way.
    """
    data_dir = Path(data_dir)
    listed = list_images(data_dir / "test_images")
    sample = data_dir / "sample_submission.csv"
    if not sample.is_file():
        return listed
    ids = read_image_ids(sample)
    if not ids:
        raise DataError(f"{sample}: lists no image")
    return ids


def check_predictions(table: pd.DataFrame, image_ids: list[str]) -> None:
    """Every test image exactly once, in order, with four valid RLE strings: else a bug, not bad input."""
    if table["ImageId"].tolist() != list(image_ids):
        raise RuntimeError("the predictions do not cover each test image exactly once")
    for column in RLE_COLUMNS:
        for image_id, encoded in zip(table["ImageId"], table[column], strict=True):
            try:
                rle.check(encoded)
            except ValueError as error:
                raise RuntimeError(f"prediction for {image_id} {column}: {error}") from None


@dataclass
class InferenceReport:
    out: Path
    n_images: int
    segmented: int
    seconds: float
    skipped: list[str] = field(default_factory=list)  # errors of the images given empty predictions

    def format(self) -> str:
        lines = [
            f"wrote {self.out}: {self.n_images} images in {self.seconds:.1f} s "
            f"({self.n_images / max(self.seconds, 1e-9):.1f} img/s); segmented {self.segmented}, "
            f"{self.n_images - self.segmented - len(self.skipped)} skipped by the gate"
        ]
        if self.skipped:
            lines.append(f"{len(self.skipped)} unreadable image(s) predicted as defect-free:")
            lines += [f"  {error}" for error in self.skipped]
        return "\n".join(lines)


def make_submission(
    predictor: EnsemblePredictor,
    images_dir: str | os.PathLike,
    image_ids: list[str],
    out: str | os.PathLike,
    fmt: SubmissionFormat = "current",
    options: PredictOptions = PredictOptions(),
    skip_bad_images: bool = False,
) -> InferenceReport:
    """Predict the images (``submission_image_ids``) and write the submission; nothing is written
    unless all went well. ``options``: the image loader's batch size and workers (the predictor
    already runs what its other options chose).

    An unreadable image is an error naming it, or with ``skip_bad_images`` an empty prediction listed
    in the report.
    """
    dataset = ReadTolerantDataset(
        pd.DataFrame({"ImageId": image_ids}), images_dir, grayscale=predictor.grayscale, with_masks=False
    )
    loader = image_loader(dataset, options.batch_size, options.workers, predictor.device)
    started, segmented_before = time.perf_counter(), predictor.segmented_images
    rows: list[tuple[str, ...]] = []
    skipped: list[str] = []
    with tqdm(total=len(image_ids), unit="img", desc="inference", disable=None) as progress:
        for prediction in predict_stream(predictor, loader):
            if prediction.error and not skip_bad_images:
                raise DataError(f"{prediction.error} (--skip-bad-images predicts no defect for it)")
            if prediction.error:
                skipped.append(prediction.error)
            rows.append((prediction.image_id, *prediction.rles))
            progress.update()
    table = pd.DataFrame(rows, columns=["ImageId", *RLE_COLUMNS])
    check_predictions(table, image_ids)
    write_submission(table, out, fmt)
    return InferenceReport(
        out=Path(out),
        n_images=len(image_ids),
        segmented=predictor.segmented_images - segmented_before,
        seconds=time.perf_counter() - started,
        skipped=skipped,
    )
