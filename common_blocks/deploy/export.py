"""``severstal export``: every network of an ensemble as ONNX, checked against PyTorch, with a manifest.

Each fold checkpoint of each member and of the gate becomes ``NAME/foldK/best.onnx`` (its path under
the runs folder, ``.onnx`` for ``.ckpt``): the graph of ``DefectNetwork.model_logits``, i.e. the resize
to ``data.scale``, the replicate padding to a multiple of 32, the network and the crop back, from a
normalised float32 (B, C, 256, 1600) batch (any B) to the logits at the network's resolution. All that
follows (TTA flips, activation, averaging, the resize to 256x1600, the gate, post-processing, RLE)
stays in the predictor, one code path for every backend. A gate that is a segmenter's class head
(``class_head``) is not exported: its pass is the encoder and the head, and it runs in torch.

``manifest.json``, written last, says how to use them (input kind and normalisation, TTA, weights,
mode, the tuned post-processing) and holds the sha256 of every ``.onnx`` and of the checkpoint it was
exported from, which is how a backend finds a checkpoint's network and notices a damaged or stale
export. The folder is replaced as a whole: a new or empty one, or with ``--overwrite`` an earlier export
(recognised by its manifest), never any other folder nor one among the ensemble's inputs. The export
checks itself: on a few of the ensemble's own images, every given runtime's
probabilities must match PyTorch's within ``TOLERANCE``, or it fails naming the network and nothing
is written.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from common_blocks.data.datasets import GREY_MEAN, GREY_STD, IMAGENET_MEAN, IMAGENET_STD, SegmentationDataset
from common_blocks.data.formats import list_images
from common_blocks.data.rle import IMAGE_SHAPE
from common_blocks.deploy.onnx_runtimes import compile_network, install_hint
from common_blocks.errors import ConfigError, DataError, PipelineError
from common_blocks.files import check_apart
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.predictor import WeightedModel, build_predictor
from common_blocks.output_folders import check_replaceable, replaced_folder
from common_blocks.training.modes import probabilities
from common_blocks.training.network import DefectNetwork

MANIFEST = "manifest.json"
FORMAT = "severstal-onnx-export/1"
OPSET = 17
# Largest difference in probability (at the network's resolution) between a runtime and PyTorch that
# the export accepts; fp32 runtimes agree to ~1e-5 in logits, bf16 moves probabilities by ~1e-2.
TOLERANCE = 1e-3
CHECK_IMAGES = 2  # images of the ensemble's data the export is checked on (a batch: the batch is dynamic)
_ENTRY_KEYS = ("file", "sha256", "checkpoint_sha256")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_exporter() -> None:
    """torch's ONNX exporter needs the ``onnx`` package (in both extras); a ConfigError without it."""
    try:
        importlib.import_module("onnx")
    except ImportError:
        raise ConfigError(
            f"exporting to ONNX needs the onnx package; {install_hint('openvino', 'onnxruntime')}"
        ) from None


class _ModelLogits(nn.Module):
    """``model_logits`` as a forward pass: the function the exporter traces."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.model_logits(images)


def export_network(module: DefectNetwork, path: Path) -> None:
    """Trace ``module.model_logits`` on a (1, C, 256, 1600) batch into ``path`` (ONNX, batch dynamic).

    The TorchScript exporter (``dynamo=False``) needs no onnxscript; its warnings (deprecation, and
    the tracer's note that the padding is fixed for the traced size) are expected and silenced.
    """
    channels = 1 if module.cfg.data.grayscale else 3
    graph = _ModelLogits(module).eval()  # eval before: the exporter restores the wrapper's mode after
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (torch.zeros(1, channels, *IMAGE_SHAPE),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )


def check_images(cfg: EnsembleConfig, grayscale: bool) -> tuple[list[str], torch.Tensor]:
    """The first ``CHECK_IMAGES`` images of the ensemble's ``test_images/`` (else ``train_images/``):
    their paths and their normalised batch."""
    folder = cfg.data_dir / "test_images"
    if not folder.is_dir():
        folder = cfg.data_dir / "train_images"
    ids = list_images(folder)[:CHECK_IMAGES]
    dataset = SegmentationDataset(
        pd.DataFrame({"ImageId": ids}), folder, grayscale=grayscale, with_masks=False
    )
    return [str(folder / i) for i in ids], torch.stack([dataset[i]["image"] for i in range(len(ids))])


def largest_difference(model: WeightedModel, path: Path, runtime: str, images: torch.Tensor) -> float:
    """The largest difference in probability between ``runtime`` running ``path`` in fp32 and PyTorch
    running the module, on ``images``."""
    mode = model.module.task_mode
    with torch.inference_mode():
        expected = probabilities(model.module.model_logits(images).float(), mode)
    logits = torch.from_numpy(compile_network(runtime, path, "fp32")(images.numpy()))
    return (probabilities(logits, mode) - expected).abs().max().item()


def _export_one(
    cfg: EnsembleConfig,
    role: str,
    model: WeightedModel,
    folder: Path,
    runtimes: Sequence[str],
    check: tuple[list[str], torch.Tensor],
) -> dict[str, Any]:
    """Export and check one network into ``folder``; its manifest entry."""
    module, checkpoint = model.module, model.checkpoint
    label = f"{role} {module.cfg.name} fold {module.fold}"
    relative = checkpoint.relative_to(cfg.runs_dir).with_suffix(".onnx")
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_network(module, path)
    except RuntimeError as error:  # torch.onnx's errors (an operator without ONNX form, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PipelineError(f"{checkpoint}: cannot export the {label} to ONNX ({reason})") from None
    files, images = check
    differences = {runtime: largest_difference(model, path, runtime, images) for runtime in runtimes}
    for runtime, difference in differences.items():
        if not difference <= TOLERANCE:  # NaN fails too
            raise PipelineError(
                f"{checkpoint}: the exported {label} differs from PyTorch by {difference:.3g} in "
                f"probability under {runtime} on {', '.join(files)} (tolerance {TOLERANCE:g}); nothing exported"
            )
    return {
        "role": role,
        "run": module.cfg.name,
        "fold": module.fold,
        "weight": model.weight,
        "task_mode": module.task_mode,
        "scale": module.cfg.data.scale,
        "file": relative.as_posix(),
        "sha256": sha256_of(path),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_of(checkpoint),
        "largest_difference": differences,
    }


def check_export_folder(out: Path, overwrite: bool) -> Path:
    """``out`` as the export folder, checked before anything loads (``output_folders.check_replaceable``)."""
    return check_replaceable(
        out, "the export folder (--out)", overwrite=overwrite, kind="an export", marker=(MANIFEST, FORMAT)
    )


def export_ensemble(
    cfg: EnsembleConfig,
    out: Path,
    runtimes: Sequence[str],
    *,
    config_path: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export every network of ``cfg`` (read from ``config_path``) into ``out``, checked under each of
    ``runtimes``; the folder is written whole or not at all and replaces an earlier export as a whole.
    Returns the manifest."""
    check_export_folder(out, overwrite)
    holds, within = cfg.inputs(config_path)
    check_apart(out, "the export", holds=holds, within=within)
    if not runtimes:
        raise ConfigError(
            "the export is checked with OpenVINO or ONNX Runtime, and neither is installed; "
            + install_hint("openvino", "onnxruntime")
        )
    check_exporter()
    postprocess, source = cfg.resolved_postprocess()
    predictor = build_predictor(cfg, postprocess=postprocess, device="cpu")
    check = check_images(cfg, predictor.grayscale)
    mean, std = (GREY_MEAN, GREY_STD) if predictor.grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    # a class-head gate runs in torch (encoder and head only): only classifier gates are exported
    gates = [gate for gate in predictor.gates if not gate.module.has_class_head]
    roles = [("member", m) for m in predictor.segmenters] + [("gate", g) for g in gates]
    with replaced_folder(out, "the export folder (--out)") as staging:
        networks = [_export_one(cfg, role, model, staging, runtimes, check) for role, model in roles]
        manifest = {
            "format": FORMAT,
            "ensemble": cfg.name,
            "ensemble_digest": cfg.digest(),
            "opset": OPSET,
            "input": {
                "kind": "grey" if predictor.grayscale else "RGB",
                "shape": [len(mean), *IMAGE_SHAPE],
                "dtype": "float32",
                "batch": "any",
                "normalisation": {"formula": "(pixel / 255 - mean) / std", "mean": mean, "std": std},
            },
            "output": "logits at the network's resolution (256 x 1600 times its scale); resize bilinearly "
            "(half-pixel centres) to 256 x 1600, activate per mode, average with the weights",
            "mode": predictor.mode,
            "tta": list(cfg.tta),
            "average": cfg.average,
            "postprocess": postprocess.model_dump(mode="json"),
            "postprocess_source": source,
            "check": {"tolerance": TOLERANCE, "images": check[0], "runtimes": list(runtimes)},
            "networks": networks,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False))
    return manifest


@dataclass(frozen=True)
class Export:
    """An export folder whose files match its manifest (``open_export``)."""

    folder: Path
    manifest: dict[str, Any]

    def network_file(self, checkpoint: Path) -> Path:
        """The ``.onnx`` exported from ``checkpoint`` (matched by content); a DataError when the export
        has none: it was made from other checkpoints or another ensemble."""
        digest = sha256_of(checkpoint)
        for entry in self.manifest["networks"]:
            if entry["checkpoint_sha256"] == digest:
                return self.folder / entry["file"]
        raise DataError(
            f"{self.folder}: holds no network exported from {checkpoint} (the export is of other "
            f"checkpoints or another ensemble); export this one again with severstal export"
        )


def open_export(folder: Path) -> Export:
    """The export in ``folder``, after checking every ``.onnx`` against its sha256 in the manifest; a
    missing, foreign, damaged or incomplete export is one DataError naming the file."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: not found; --exported takes a folder severstal export wrote")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{manifest_path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: not a manifest of severstal export (format {FORMAT})")
    networks = manifest.get("networks")
    if not isinstance(networks, list) or not all(
        isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in _ENTRY_KEYS)
        for entry in networks
    ):
        raise DataError(f"{manifest_path}: 'networks' must list objects with {', '.join(_ENTRY_KEYS)}")
    for entry in networks:
        relative = Path(entry["file"])
        if relative.is_absolute() or ".." in relative.parts:
            raise DataError(f"{manifest_path}: network file {entry['file']} lies outside the export folder")
        path = folder / relative
        if not path.is_file():
            raise DataError(f"{path}: listed in {manifest_path} but missing; export again")
        if sha256_of(path) != entry["sha256"]:
            raise DataError(
                f"{path}: its sha256 does not match {manifest_path} (damaged or changed since the "
                "export); export again"
            )
    return Export(folder, manifest)
