"""Pseudo-labels: which test images to trust, how their labels are stored, how they join training batches.

Selection: an image is kept only when the classifier gate is confident about every class (probability
above ``p_high`` or below ``p_low``) and the post-processed masks agree with it (a non-empty mask
exactly for the classes above ``p_high``). An image the ensemble is unsure about, or on which its
gate and its masks disagree, would teach the model its own mistakes.

Storage: ``round<R>.csv`` has the train.csv header ``ImageId,ClassId,EncodedPixels`` and four rows
per kept image, an empty EncodedPixels meaning no defect of that class. train.csv can list defect
rows only because every image of its folder is labelled; a pseudo-label file labels only the kept
test images, so it lists them all, the defect-free ones by their empty rows.

Mixing: ``MixedSampler`` lays out every training batch as real images from the usual sampler (the
balanced one, sharded over DDP ranks) followed by pseudo-labelled test images, ``fraction`` of the
batch, from a shuffled stream sharded over the ranks the same way.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from torch.utils.data import Sampler

from common_blocks.config import PseudoConfig
from common_blocks.errors import ConfigError
from common_blocks.files import atomic_output
from common_blocks.formats import (
    CLASS_IDS,
    CURRENT_COLUMNS,
    list_images,
    read_label_rows,
    rows_to_table,
    table_to_rows,
)

N_CLASSES = len(CLASS_IDS)
Verdict = Literal["kept", "unsure", "disagree"]


# --- selection ---------------------------------------------------------------------------------------


def check_thresholds(p_high: float, p_low: float) -> None:
    if not 0.0 <= p_low < p_high <= 1.0:
        raise ConfigError(f"pseudo-label thresholds need 0 <= p_low < p_high <= 1, got {p_low=}, {p_high=}")


def _gate(gate_probs: np.ndarray) -> np.ndarray:
    gate = np.asarray(gate_probs, dtype=np.float64)
    if gate.shape != (N_CLASSES,):
        raise ValueError(f"expected {N_CLASSES} gate probabilities, got shape {gate.shape}")
    return gate


def _present(masks: np.ndarray) -> np.ndarray:
    if masks.ndim != 3 or masks.shape[0] != N_CLASSES:
        raise ValueError(f"expected ({N_CLASSES}, H, W) masks, got shape {masks.shape}")
    return masks.reshape(N_CLASSES, -1).any(axis=1)


def verdict(gate_probs: np.ndarray, masks: np.ndarray, p_high: float, p_low: float) -> Verdict:
    """``kept``, ``unsure`` (a gate probability within [p_low, p_high]) or ``disagree`` (a confident
    gate, but a class above p_high without a mask or one below p_low with a mask)."""
    gate = _gate(gate_probs)
    positive = gate > p_high
    if not (positive | (gate < p_low)).all():
        return "unsure"
    return "kept" if np.array_equal(positive, _present(masks)) else "disagree"


def select(gate_probs: np.ndarray, masks: np.ndarray, p_high: float = 0.95, p_low: float = 0.05) -> bool:
    """Whether a test image's predicted masks are trusted as labels (see the module docstring)."""
    check_thresholds(p_high, p_low)
    return verdict(gate_probs, masks, p_high, p_low) == "kept"


def confidence(gate_probs: np.ndarray) -> float:
    """How sure the gate is about the image: its least confident class, min over classes of max(p, 1-p)."""
    gate = _gate(gate_probs)
    return float(np.maximum(gate, 1.0 - gate).min())


@dataclass
class SelectionSummary:
    """Applies the rule image by image and counts what it kept, and why it rejected the others."""

    p_high: float = 0.95
    p_low: float = 0.05
    considered: int = 0
    kept: int = 0
    unsure: int = 0
    disagree: int = 0
    kept_per_class: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES, dtype=np.int64))
    kept_defect_free: int = 0
    confidence_sum: float = 0.0
    kept_confidence_sum: float = 0.0

    def __post_init__(self) -> None:
        check_thresholds(self.p_high, self.p_low)

    def add(self, gate_probs: np.ndarray, masks: np.ndarray) -> bool:
        """Judge and record one image; True when it is kept."""
        result = verdict(gate_probs, masks, self.p_high, self.p_low)
        image_confidence = confidence(gate_probs)
        self.considered += 1
        self.confidence_sum += image_confidence
        if result == "kept":
            present = _present(masks)
            self.kept += 1
            self.kept_per_class += present
            self.kept_defect_free += int(not present.any())
            self.kept_confidence_sum += image_confidence
        elif result == "unsure":
            self.unsure += 1
        else:
            self.disagree += 1
        return result == "kept"

    def to_dict(self) -> dict:
        return {
            "p_high": self.p_high,
            "p_low": self.p_low,
            "images_considered": self.considered,
            "images_kept": self.kept,
            "rejected_unsure": self.unsure,
            "rejected_disagree": self.disagree,
            "kept_per_class": {str(c): int(n) for c, n in zip(CLASS_IDS, self.kept_per_class, strict=True)},
            "kept_defect_free": self.kept_defect_free,
            "mean_confidence": self.confidence_sum / self.considered if self.considered else None,
            "mean_confidence_kept": self.kept_confidence_sum / self.kept if self.kept else None,
        }

    def format(self) -> str:
        per_class = "  ".join(f"class {c}: {n}" for c, n in zip(CLASS_IDS, self.kept_per_class, strict=True))
        kept_confidence = f"{self.kept_confidence_sum / self.kept:.4f}" if self.kept else "-"
        return (
            f"kept {self.kept} of {self.considered} test images (p_high {self.p_high}, p_low {self.p_low}); "
            f"rejected {self.unsure} unsure, {self.disagree} where gate and masks disagree\n"
            f"kept images with a defect of {per_class}  defect-free {self.kept_defect_free}  "
            f"mean confidence of the kept images {kept_confidence}"
        )


# --- storage ----------------------------------------------------------------------------------------


def write_pseudo_labels(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the kept images' label table, four rows per image (header only when none), atomically."""
    with atomic_output(path) as temporary:
        table_to_rows(table).to_csv(temporary, columns=list(CURRENT_COLUMNS), index=False)


def read_pseudo_labels(csv_path: str | os.PathLike, images_dir: str | os.PathLike) -> pd.DataFrame:
    """The label table of the images the file lists; a row naming an image missing from ``images_dir``
    is a DataError naming its line.

    Not ``formats.read_labels(csv, images_dir)``: that labels every image of the folder, and would
    take the test images the selection rejected for defect-free ones.
    """
    rows = read_label_rows(csv_path)
    table = rows_to_table(rows, list_images(images_dir), str(csv_path), f"the image folder {images_dir}")
    return table[table["ImageId"].isin(set(rows["ImageId"]))].reset_index(drop=True)


def load_pseudo_table(cfg: PseudoConfig, images_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The pseudo-labels to train with; None when not configured, when ``fraction`` is 0, or (with a
    warning) when the file lists no image, e.g. after a round that kept nothing."""
    if cfg.labels is None or cfg.fraction == 0:
        return None
    table = read_pseudo_labels(cfg.labels, images_dir)
    if table.empty:
        warnings.warn(f"{cfg.labels}: no pseudo-labelled image; training on real images only", stacklevel=2)
        return None
    return table


def round_path(out_dir: str | os.PathLike, round_number: int, suffix: str = ".csv") -> Path:
    """``OUT_DIR/round<R>.csv`` and its companions (``_summary.json``)."""
    return Path(out_dir) / f"round{round_number}{suffix}"


# --- batch mixing -----------------------------------------------------------------------------------


def pseudo_counts(n_real: int, batch_size: int, fraction: float) -> np.ndarray:
    """Pseudo images in each batch of an epoch that uses up to ``n_real`` real images.

    Batch b holds floor((b+1) B f) - floor(b B f) of them, so every batch is within one image of
    ``f B`` and every run of batches within one image of the fraction (B=4, f=0.3: 1,1,1,1,2, ...).
    The epoch has as many batches as the real images fill; all of them go in but a part-batch.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n_max = int(np.ceil(n_real / (batch_size * (1 - fraction)))) + 1
    batches = np.arange(n_max + 1)
    pseudo_before = np.floor(batches * batch_size * fraction + 1e-9).astype(np.int64)
    real_before = batches * batch_size - pseudo_before
    n_batches = int(np.searchsorted(real_before, n_real, side="right")) - 1
    return np.diff(pseudo_before[: n_batches + 1])


class MixedSampler(Sampler[int]):
    """Indices into ``ConcatDataset([real, pseudo])``, batch after batch: ``batch_size - k`` real indices
    from ``real`` (this rank's shard of its epoch), then ``k`` pseudo indices (``pseudo_counts``).

    Pseudo indices come from one stream all ranks build alike from ``seed`` and the epoch, made of
    whole shuffled passes over the pseudo images (each drawn equally often, up to one); rank r takes
    its items r, r + num_replicas, ..., so the ranks' shards are disjoint. A flat sampler rather than
    a batch sampler, to be used with ``batch_size`` and ``drop_last=True``: Lightning calls
    ``set_epoch`` on a DataLoader's ``sampler``, and this one passes it on to ``real``.
    """

    def __init__(
        self,
        real: Sampler[int],
        n_real_images: int,
        n_pseudo_images: int,
        batch_size: int,
        fraction: float,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if n_pseudo_images < 1:
            raise ValueError("MixedSampler needs at least one pseudo-labelled image")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.real = real
        self.offset = n_real_images  # pseudo image i is item offset + i of the ConcatDataset
        self.n_pseudo = n_pseudo_images
        self.batch_size = batch_size
        self.counts = pseudo_counts(len(real), batch_size, fraction)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.real, "set_epoch", None)):
            self.real.set_epoch(epoch)

    def pseudo_indices(self) -> np.ndarray:
        """This rank's pseudo items of the epoch, in order (ConcatDataset indices)."""
        total = int(self.counts.sum()) * self.num_replicas
        passes = -(-total // self.n_pseudo)
        rng = np.random.default_rng([self.seed, self.epoch])
        stream = rng.permuted(np.tile(np.arange(self.n_pseudo), (passes, 1)), axis=1).ravel()[:total]
        return stream[self.rank :: self.num_replicas] + self.offset

    def __iter__(self) -> Iterator[int]:
        real = iter(self.real)
        pseudo = iter(self.pseudo_indices().tolist())
        for count in self.counts.tolist():
            yield from itertools.islice(real, self.batch_size - count)
            yield from itertools.islice(pseudo, count)

    def __len__(self) -> int:
        return len(self.counts) * self.batch_size
