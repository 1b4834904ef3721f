"""Ensemble prediction: member checkpoints with test-time flips, averaged, gated, post-processed, encoded.

The gate (classifiers, or segmenters' class heads) runs first, and segmentation runs only on the
images where it lets at least one class through (probability >= that class's gate threshold): on a
test set that is half defect-free that skips half the segmentation. A skipped image gets the masks
post-processing would give it anyway (every class dropped by its gate), so gating changes the speed,
never the submission.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from common_blocks.backend_names import PRECISIONS
from common_blocks.data import rle
from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import ConfigError
from common_blocks.evaluation.postprocess import PostprocessConfig, postprocess_mask
from common_blocks.inference.ensemble_checkpoints import check_compatible, checkpoints_of, load_runs
from common_blocks.inference.ensemble_config import TTA_FLIPS, EnsembleConfig
from common_blocks.training.modes import CLASSIFICATION_MODE, MULTILABEL_MODE, probabilities
from common_blocks.training.network import DefectNetwork

# The networks' arithmetic, whichever backend runs them: fp32, fp16 (CUDA only) or bf16 (CUDA, or a
# CPU with bf16 instructions); the torch backend runs the reduced ones as autocast to these dtypes.
# the autocast dtype of each of backend_names.PRECISIONS
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# A network as a backend runs it: a normalised float32 (B, C, H, W) CPU batch -> its logits at the
# network's own resolution (``data.scale``), as ``DefectNetwork.model_logits`` gives them.
Network = Callable[[torch.Tensor], torch.Tensor]
EMPTY_RLES = ("",) * N_CLASSES
# Added to a plane's bound (``EnsemblePredictor.planes``) to cover float32 rounding in the resize and the
# sums, which can put a blend a few units in the last place (~1e-7 here) above the maxima it blends.
BOUND_MARGIN = 1e-5


def check_precision(precision: str, device: torch.device) -> None:
    """A ConfigError unless ``precision`` is one of ``PRECISIONS`` that ``device`` can run."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision fp16 needs a CUDA device (the predictor runs on {device.type}); use fp32 or bf16"
        )


class Runtime(Protocol):
    """A backend that runs the networks outside torch (``common_blocks.deploy``: ONNX Runtime,
    OpenVINO), on the CPU."""

    name: str

    def load(self, checkpoint: Path, precision: str) -> Network:
        """The network of ``checkpoint`` compiled to run in ``precision``."""
        ...


@dataclass(frozen=True)
class WeightedModel:
    """A network, its ``task_mode`` (see ``modes``), and its weight in the average.

    Used as ``DefectNetwork`` is: ``model_logits(images)`` gives logits at the network's resolution
    (a gate's are (B, 4)) and ``to_input_size(logits, images)`` resizes them to the images'.
    ``compiled`` is the same network as a ``Runtime`` runs it; without one the module runs in torch.
    ``checkpoint`` is the file it was loaded from, when it was.
    """

    module: nn.Module
    weight: float = 1.0
    compiled: Network | None = None
    checkpoint: Path | None = None

    @property
    def mode(self) -> str:
        return self.module.task_mode


class EnsemblePredictor:
    """Averages the segmenters over the flips in ``tta``, gates with the classifiers, post-processes.

    ``average="logits"`` averages logits and applies the mode's activation once; ``"probabilities"``
    activates each output first. Weights are relative. ``grayscale`` tells the caller's loader which
    input the models were trained on (one grey channel or RGB). ``segmented_images`` counts the images
    that went through segmentation, so callers can report what the gate saved.

    ``precision`` is the networks' arithmetic: ``fp32`` (the default), or ``fp16`` (CUDA only) or
    ``bf16``: torch modules run under autocast to it, compiled networks were compiled for it. Their
    outputs are taken to fp32 before flips are undone, activated, averaged and resized, so only the
    networks themselves run in half precision, and everything after them is one code path for every
    backend.
    """

    def __init__(
        self,
        segmenters: Sequence[WeightedModel],
        gates: Sequence[WeightedModel] = (),
        *,
        tta: Sequence[str] = ("none",),
        average: str = "probabilities",
        postprocess: PostprocessConfig | None = None,
        device: str | torch.device = "cpu",
        grayscale: bool = False,
        precision: str = "fp32",
    ) -> None:
        modes = {model.mode for model in segmenters}
        if len(modes) != 1 or CLASSIFICATION_MODE in modes:
            raise ConfigError(f"segmenters must share one segmentation mode, got {sorted(modes)}")
        if not all(gate.module.can_gate for gate in gates):
            raise ConfigError("every gate model must be a classifier or a segmenter with a class head")
        unknown = [name for name in tta if name not in TTA_FLIPS]
        if unknown or not tta:
            raise ConfigError(f"tta: expected some of {', '.join(TTA_FLIPS)}, got {list(tta)}")
        if average not in ("probabilities", "logits"):
            raise ConfigError(f"average: expected 'probabilities' or 'logits', got {average!r}")
        device = torch.device(device)
        check_precision(precision, device)
        self.segmenters = list(segmenters)
        self.gates = list(gates)
        self.mode = modes.pop()
        self.tta = [TTA_FLIPS[name] for name in tta]
        self.average = average
        self.postprocess = postprocess or PostprocessConfig()
        self.device = device
        self.precision = precision
        self.grayscale = grayscale
        self.gate_thresholds = np.array([c.gate for c in self.postprocess.classes], dtype=np.float64)
        self.segmented_images = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of the torch modules' forward passes: autocast to ``precision``; none for fp32."""
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def network_logits(self, model: WeightedModel, images: torch.Tensor) -> torch.Tensor:
        """``model``'s logits at its network's resolution: its compiled network's, or its module's
        under ``autocast``."""
        if model.compiled is not None:
            return model.compiled(images)
        with self.autocast():
            return model.module.model_logits(images)

    def gate_logits(self, gate: WeightedModel, images: torch.Tensor) -> torch.Tensor:
        """``gate``'s (B, 4) image-level logits: its compiled network's (a classifier's), or its module's
        ``class_logits`` under ``autocast`` (a class head runs in torch: it needs only the encoder)."""
        if gate.compiled is not None:
            return gate.compiled(images)
        with self.autocast():
            return gate.module.class_logits(images)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` on the predictor's device (the same tensor when already there): callers that use
        both the gate and the segmenters move a batch once. From pinned memory the copy is asynchronous."""
        return images.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def gate_probabilities(self, images: torch.Tensor) -> np.ndarray | None:
        """(B, 4) float32 image-level probabilities averaged over the gate models (classifiers or class
        heads); None without a gate."""
        if not self.gates:
            return None
        images = self.to_device(images)
        outputs = [(gate.weight, self.gate_logits(gate, images)) for gate in self.gates]
        total = sum(weight * output.float().sigmoid() for weight, output in outputs)
        return (total / sum(gate.weight for gate in self.gates)).cpu().numpy()

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) float32 ensemble probabilities on the CPU, for every image (no gating).

        Each member's flips are undone, activated and summed at the network's own resolution and the
        sum is resized to the input once: at ``data.scale`` 0.25 that is 16x fewer pixels to flip,
        activate and add, and one resize per member instead of one per flip. Sums run in place,
        because each extra full-resolution map is an allocation and a pass over memory of its own.
        The result is laid out class plane by class plane, as thresholding, component labelling and
        RLE want it (the networks' outputs are channels-last; post-processing strided planes was 3x
        slower). The maps cross to the CPU once per batch, at the end.
        """
        images = self.to_device(images)
        norm = self._norm()
        total: torch.Tensor | None = None
        for model in self.segmenters:
            member = model.module.to_input_size(self._member_sum(model, images, model.weight / norm), images)
            total = member if total is None else total.add_(member)
        if self.average == "logits":
            total = activate_(total, self.mode)
        self.segmented_images += images.shape[0]
        return total.contiguous().cpu()

    def _norm(self) -> float:
        return sum(model.weight for model in self.segmenters) * len(self.tta)

    def _member_sum(self, model: WeightedModel, images: torch.Tensor, weight: float) -> torch.Tensor:
        """``weight`` times the sum over the flips of the network's output on the flipped images, flipped
        back (and activated when averaging probabilities), at the network's resolution. Each pass's
        output is freed before the next forward pass allocates its own."""
        total: torch.Tensor | None = None
        for dims in self.tta:
            value = self.network_logits(model, images.flip(dims) if dims else images).float()
            if dims:
                value = value.flip(dims)
            if self.average == "probabilities":
                value = activate_(value, self.mode)
            total = value.mul_(weight) if total is None else total.add_(value, alpha=weight)
            del value
        return total

    @property
    def resizes_planes(self) -> bool:
        """Whether ``planes`` resizes only the class planes that can hold a pixel above its threshold:
        multilabel members (each class its own sigmoid) that all run below the input's resolution.
        A member at full resolution has nothing to resize, and holding its maps until the bounds are
        known would cost a full-resolution map per member."""
        return self.mode == MULTILABEL_MODE and all(m.module.resizes_logits for m in self.segmenters)

    @torch.inference_mode()
    def planes(self, images: torch.Tensor, needed: Callable[[np.ndarray], np.ndarray]) -> dict:
        """``{(image, class): (H, W) float32 probabilities}`` of the planes ``needed`` asks for, equal bit
        for bit to the planes of ``probabilities(images)``; the other planes are not computed.

        ``needed`` takes an upper bound (B, 4) of each plane's probabilities and returns which (B, 4)
        planes to compute. A resized map is a bilinear blend of the map it comes from, so it never
        exceeds that map's maximum: the bound is the sum of the members' maxima at their networks'
        resolution (activated, for ``average: logits``), plus ``BOUND_MARGIN`` for rounding. On a test
        set where most planes are defect-free, most of the resizing and post-processing is skipped.
        Without ``resizes_planes`` the bound is infinite and every plane is computed.
        """
        images = self.to_device(images)
        if not self.resizes_planes:
            probs = self.probabilities(images).numpy()
            wanted = needed(np.full(probs.shape[:2], np.inf))
            return {(int(i), int(c)): probs[i, c] for i, c in zip(*np.nonzero(wanted), strict=True)}
        norm = self._norm()
        # class planes contiguous (the networks' outputs are channels-last): the maxima 4x faster
        maps = [
            self._member_sum(model, images, model.weight / norm).contiguous() for model in self.segmenters
        ]
        self.segmented_images += images.shape[0]
        bounds = sum(member.flatten(2).amax(-1).double() for member in maps)
        if self.average == "logits":
            bounds = bounds.sigmoid()
        rows, classes = np.nonzero(needed((bounds + BOUND_MARGIN).cpu().numpy()))
        if not rows.size:
            return {}
        index = torch.from_numpy(rows).to(images.device), torch.from_numpy(classes).to(images.device)
        total: torch.Tensor | None = None
        for model, member in zip(self.segmenters, maps, strict=True):
            resized = model.module.to_input_size(member[index][None], images)
            total = resized if total is None else total.add_(resized)
        if self.average == "logits":
            total = activate_(total, self.mode)
        selected = total[0].cpu().numpy()
        return {(int(i), int(c)): selected[k] for k, (i, c) in enumerate(zip(rows, classes, strict=True))}

    def passes_gate(self, gate_probs: np.ndarray | None, n_images: int) -> np.ndarray:
        """(B,) bool: the images for which some class's gate probability reaches its threshold."""
        if gate_probs is None:
            return np.ones(n_images, dtype=bool)
        return (gate_probs.astype(np.float64) >= self.gate_thresholds).any(axis=1)

    def masks(self, images: torch.Tensor) -> tuple[np.ndarray | None, dict]:
        """Gate probabilities (B, 4) (None without a gate) and ``{(image, class): (H, W) uint8 mask}`` of
        the post-processed planes that may hold a defect; every other plane's mask is empty.

        Only the images that pass the gate are segmented; of those, only the planes that post-processing
        could leave non-empty are resized and post-processed: not gated away (its class's required area
        finite) and with a bound above the class's threshold. The batch goes to the device once.
        """
        images = self.to_device(images)
        gate_probs = self.gate_probabilities(images)
        chosen = np.flatnonzero(self.passes_gate(gate_probs, images.shape[0]))
        if not chosen.size:
            return gate_probs, {}
        selected = (
            images if chosen.size == len(images) else images[torch.from_numpy(chosen).to(images.device)]
        )
        classes = self.postprocess.classes
        thresholds = np.array([c.threshold for c in classes], np.float64)
        gates = np.full((chosen.size, len(classes)), np.nan) if gate_probs is None else gate_probs[chosen]
        droppable = np.array(
            [
                [c.required_area(float(g) < c.gate) == np.inf for c, g in zip(classes, row, strict=True)]
                for row in gates
            ]
        )

        def needed(bounds: np.ndarray) -> np.ndarray:
            return (bounds > thresholds) & ~droppable

        masks = {}
        for (row, k), prob in self.planes(selected, needed).items():
            gate = None if gate_probs is None else float(gate_probs[chosen[row], k])
            masks[(int(chosen[row]), k)] = postprocess_mask(prob, classes[k], gate)
        return gate_probs, masks

    def predict_masks(self, images: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray]:
        """Gate probabilities (B, 4) (None without a gate) and post-processed (B, 4, H, W) uint8 masks."""
        gate_probs, masks = self.masks(images)
        out = np.zeros((images.shape[0], len(EMPTY_RLES), *images.shape[-2:]), np.uint8)
        for (index, k), mask in masks.items():
            out[index, k] = mask
        return gate_probs, out

    def predict(self, images: torch.Tensor) -> list[tuple[str, str, str, str]]:
        """The four RLE strings of each image of a normalised (B, C, H, W) batch."""
        _, masks = self.masks(images)
        rles = [list(EMPTY_RLES) for _ in range(images.shape[0])]
        for (index, k), mask in masks.items():
            rles[index][k] = rle.encode(mask)
        return [tuple(row) for row in rles]


def activate_(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """``modes.probabilities``, overwriting ``logits`` where the mode allows it (multilabel)."""
    return logits.sigmoid_() if mode == MULTILABEL_MODE else probabilities(logits, mode)


def build_predictor(
    cfg: EnsembleConfig,
    folds: list[int] | None = None,
    postprocess: PostprocessConfig | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    runtime: Runtime | None = None,
) -> EnsemblePredictor:
    """Load the ensemble's checkpoints (only those of ``folds`` when given) once, into a predictor.

    Each member's folds share its weight equally. Missing checkpoints are all listed in one error
    before anything loads; members of different modes are an error. ``precision`` is the
    ``EnsemblePredictor``'s (fp32, fp16 on CUDA, bf16); a bad one is an error before anything loads.
    With a ``runtime`` the networks run there, on the CPU; the checkpoints load all the same: their
    configs say how to use the networks, and the runtime finds each network by its checkpoint.
    """
    default = "cuda" if runtime is None and torch.cuda.is_available() else "cpu"
    device = torch.device(device or default)
    if runtime is not None and device.type != "cpu":
        raise ConfigError(f"the {runtime.name} backend runs on the CPU, not on {device}")
    check_precision(precision, device)
    cfg.check_checkpoints(folds)
    members = [load_runs(cfg, ref, folds, device) for ref in cfg.members]
    gates = load_runs(cfg, cfg.gate, folds, device) if cfg.gate else []
    check_compatible(cfg, members, gates, folds)

    def weighted(module: DefectNetwork, path: Path, weight: float, gate: bool = False) -> WeightedModel:
        # a class head's gate pass is the encoder and the head: it runs in torch (exports are of model_logits)
        compiled = (
            None if runtime is None or (gate and module.has_class_head) else runtime.load(path, precision)
        )
        return WeightedModel(module, weight, compiled, path)

    segmenters = [
        weighted(module, path, ref.weight / len(loaded))
        for ref, loaded in zip(cfg.members, members, strict=True)
        for path, module in zip(checkpoints_of(cfg, ref, folds), loaded, strict=True)
    ]
    if not segmenters:
        raise ConfigError(f"no member of ensemble {cfg.name} has a checkpoint of fold(s) {folds}")
    gate_files = checkpoints_of(cfg, cfg.gate, folds) if cfg.gate else []
    return EnsemblePredictor(
        segmenters,
        [weighted(module, path, 1.0, gate=True) for path, module in zip(gate_files, gates, strict=True)],
        tta=cfg.tta,
        average=cfg.average,
        postprocess=postprocess,
        device=device,
        grayscale=segmenters[0].module.cfg.data.grayscale,
        precision=precision,
    )
