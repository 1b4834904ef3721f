"""Pseudo-labels: which test images to trust.

Selection: an image is kept only when the classifier gate is confident about every class (probability
above ``p_high`` or below ``p_low``) and the post-processed masks agree with it (a non-empty mask
exactly for the classes above ``p_high``). An image the ensemble is unsure about, or on which its
gate and its masks disagree, would teach the model its own mistakes.

With image-level labels (which classes each image holds, ``severstal pseudo --image-labels``) the rule
is per class: a class the image does not hold is a certain empty mask; a class it holds takes the
ensemble's mask where the ensemble is sure of it (gate probability above ``p_high`` and a non-empty
post-processed mask); where it is not, the class is left out of the loss for that image (``ignore``,
an ``Ignored`` row) or the image is left out (``drop``).

Storage (``formats.write_pseudo_labels``) and batch mixing (``samplers.MixedSampler``) live in ``data``,
where training reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from common_blocks.data.formats import (
    CLASS_IDS,
    N_CLASSES,
)
from common_blocks.errors import ConfigError

Verdict = Literal["kept", "unsure", "disagree"]
Unsure = Literal["ignore", "drop"]


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


def sure_classes(gate_probs: np.ndarray, masks: np.ndarray, labels: np.ndarray, p_high: float) -> np.ndarray:
    """(4,) bool, for an image whose classes are known (``labels``): which the round can label, every
    class the image does not hold (an empty mask) and those it holds where the gate is above ``p_high``
    and the post-processed mask is not empty."""
    return ~labels | ((_gate(gate_probs) > p_high) & _present(masks))


def confidence(gate_probs: np.ndarray) -> float:
    """How sure the gate is about the image: its least confident class, min over classes of max(p, 1-p)."""
    gate = _gate(gate_probs)
    return float(np.maximum(gate, 1.0 - gate).min())


@dataclass
class SelectionSummary:
    """Applies the rule image by image and counts what it kept, and why it rejected the others;
    ``on_unsure`` (``ignore`` or ``drop``) for images with image-level labels (``add_labelled``), None
    without them."""

    p_high: float = 0.95
    p_low: float = 0.05
    on_unsure: Unsure | None = None
    considered: int = 0
    kept: int = 0
    unsure: int = 0
    disagree: int = 0
    kept_per_class: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES, dtype=np.int64))
    kept_defect_free: int = 0
    ignored_per_class: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES, dtype=np.int64))
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

    def add_labelled(
        self, gate_probs: np.ndarray, masks: np.ndarray, labels: np.ndarray
    ) -> tuple[bool, np.ndarray]:
        """Judge and record one image whose classes are known (``labels``, (4,) bool): whether it is
        kept, and which of its classes are left out of the loss (``sure_classes``' others; none when
        dropped). An image with an unsure class counts as ``unsure``, kept or not."""
        if self.on_unsure is None:
            raise ValueError("SelectionSummary.add_labelled needs on_unsure ('ignore' or 'drop')")
        unsure = ~sure_classes(gate_probs, masks, labels, self.p_high)
        kept = self.on_unsure == "ignore" or not unsure.any()
        image_confidence = confidence(gate_probs)
        self.considered += 1
        self.confidence_sum += image_confidence
        self.unsure += int(unsure.any())
        if not kept:
            return False, np.zeros(N_CLASSES, dtype=bool)
        self.kept += 1
        self.kept_per_class += labels & ~unsure
        self.ignored_per_class += unsure
        self.kept_defect_free += int(not labels.any())
        self.kept_confidence_sum += image_confidence
        return True, unsure

    def _per_class(self, counts: np.ndarray) -> dict[str, int]:
        return {str(c): int(n) for c, n in zip(CLASS_IDS, counts, strict=True)}

    def to_dict(self) -> dict:
        labelled = {}
        if self.on_unsure is not None:
            labelled = {
                "unsure": self.on_unsure,
                "ignored_per_class": self._per_class(self.ignored_per_class),
            }
        return {
            "p_high": self.p_high,
            "p_low": self.p_low,
            **labelled,
            "images_considered": self.considered,
            "images_kept": self.kept,
            "rejected_unsure": self.unsure,
            "rejected_disagree": self.disagree,
            "kept_per_class": self._per_class(self.kept_per_class),
            "kept_defect_free": self.kept_defect_free,
            "mean_confidence": self.confidence_sum / self.considered if self.considered else None,
            "mean_confidence_kept": self.kept_confidence_sum / self.kept if self.kept else None,
        }

    def format(self) -> str:
        per_class = "  ".join(f"class {c}: {n}" for c, n in zip(CLASS_IDS, self.kept_per_class, strict=True))
        kept_confidence = f"{self.kept_confidence_sum / self.kept:.4f}" if self.kept else "-"
        if self.on_unsure is None:
            head = (
                f"kept {self.kept} of {self.considered} test images (p_high {self.p_high}, p_low {self.p_low}); "
                f"rejected {self.unsure} unsure, {self.disagree} where gate and masks disagree"
            )
        else:
            ignored = "  ".join(
                f"class {c}: {n}" for c, n in zip(CLASS_IDS, self.ignored_per_class, strict=True)
            )
            head = (
                f"kept {self.kept} of {self.considered} images with image-level labels (p_high {self.p_high}, "
                f"--unsure {self.on_unsure}); {self.unsure} with a class the ensemble is unsure of; "
                f"classes left out of the loss: {ignored}"
            )
        return (
            f"{head}\nkept images with a defect of {per_class}  defect-free {self.kept_defect_free}  "
            f"mean confidence of the kept images {kept_confidence}"
        )
