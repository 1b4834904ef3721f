"""Checkpoint weight averaging (12th place: the mean weights of the 5 best checkpoints, +0.3-0.5 points).

While a run fits, ``TopKWeights`` keeps the weights of its K best validations (by the monitored score)
as files in ``RunPaths.top_k``; when the fit ends it writes ``averaged.ckpt``, a checkpoint like
``best.ckpt`` whose weights are the mean of those K. Batch-norm statistics are either averaged with
the weights or re-estimated with the averaged weights on training batches (the statistics of a mean
of weights are not the mean of their statistics).
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from common_blocks.backend_names import LIGHTNING_PRECISIONS
from common_blocks.files import atomic_output
from common_blocks.run_folder import RunPaths

_EPOCH_FILE = re.compile(r"^epoch(\d+)\.pt$")


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating tensors (computed in float64, stored in their dtype); other
    tensors (batch-norm step counters) are taken from the first state dict."""
    if not state_dicts:
        raise ValueError("no state dicts to average")
    first = state_dicts[0]
    for other in state_dicts[1:]:
        if other.keys() != first.keys():
            raise ValueError("state dicts to average have different keys")
    averaged = {}
    for name, tensor in first.items():
        if tensor.is_floating_point():
            total = sum(state[name].double() for state in state_dicts)
            averaged[name] = (total / len(state_dicts)).to(tensor.dtype)
        else:
            averaged[name] = tensor.clone()
    return averaged


@torch.no_grad()
def reestimate_batch_norm(
    model: nn.Module, batches: Iterable[torch.Tensor], run: Callable[[torch.Tensor], Any] | None = None
) -> None:
    """Replace every batch-norm layer's running statistics by their plain mean over ``batches``, each
    passed through ``run`` (default: ``model``); torch.optim.swa_utils.update_bn does the same for a
    loader of plain tensors into the model itself."""
    norms = [layer for layer in model.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {layer: layer.momentum for layer in norms}
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for images in batches:
        (run or model)(images)
    for layer, momentum in momenta.items():
        layer.momentum = momentum
    model.train(was_training)


class TopKWeights(L.Callback):
    """Keeps the weights of the ``k`` best validations by ``monitor`` in ``paths.top_k`` (one file per
    epoch holding its score, so the folder itself is the state a resumed run continues from) and writes
    ``paths.averaged`` when the fit ends. ``reestimate_batches`` > 0 re-estimates batch-norm statistics
    on that many training batches; 0 averages them."""

    def __init__(self, paths: RunPaths, k: int, monitor: str, reestimate_batches: int = 0) -> None:
        self.paths = paths
        self.k = k
        self.monitor = monitor
        self.reestimate_batches = reestimate_batches

    def kept(self) -> list[tuple[float, int, Path]]:
        """(score, epoch, file) of the weights kept, best first (the earlier epoch first among ties)."""
        entries = []
        for path in self.paths.top_k.glob("epoch*.pt"):
            match = _EPOCH_FILE.match(path.name)
            if match:
                score = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["score"]
                entries.append((float(score), int(match.group(1)), path))
        return sorted(entries, key=lambda entry: (-entry[0], entry[1]))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Drop killed writes' temporaries and the weights of epochs a resumed run trains again."""
        if not trainer.is_global_zero or not self.paths.top_k.is_dir():
            return
        for temporary in self.paths.top_k.glob(".*.tmp"):
            temporary.unlink(missing_ok=True)
        for _, epoch, path in self.kept():
            if epoch >= trainer.current_epoch:
                path.unlink()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking or not trainer.is_global_zero:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None or not torch.isfinite(score):
            return
        kept = self.kept()
        if len(kept) >= self.k and float(score) <= kept[self.k - 1][0]:
            return
        self.paths.top_k.mkdir(exist_ok=True)
        state = {name: tensor.detach().cpu().clone() for name, tensor in pl_module.state_dict().items()}
        with atomic_output(
            self.paths.top_k / f"epoch{trainer.current_epoch:03d}.pt", "kept weights"
        ) as temporary:
            torch.save(
                {"state_dict": state, "score": float(score), "epoch": trainer.current_epoch}, temporary
            )
        for _, _, path in self.kept()[self.k :]:
            path.unlink()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        kept = self.kept()
        reference = self.paths.best if self.paths.best.is_file() else self.paths.last
        if not kept or not reference.is_file():
            return
        checkpoint = torch.load(reference, map_location="cpu", weights_only=True)
        state_dicts = [
            torch.load(path, map_location="cpu", weights_only=True)["state_dict"] for _, _, path in kept
        ]
        averaged = average_state_dicts(state_dicts)
        if self.reestimate_batches:
            averaged = self._reestimated(trainer, pl_module, averaged)
        for key in ("optimizer_states", "lr_schedulers", "loops"):
            checkpoint.pop(key, None)
        checkpoint["state_dict"] = averaged
        checkpoint["averaged_epochs"] = [epoch for _, epoch, _ in kept]
        checkpoint["averaged_scores"] = [score for score, _, _ in kept]
        with atomic_output(self.paths.averaged, "the averaged checkpoint") as temporary:
            torch.save(checkpoint, temporary)

    def _reestimated(
        self, trainer: L.Trainer, pl_module: L.LightningModule, averaged: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``averaged`` with batch-norm statistics measured on training batches, on a copy of the module."""
        module = copy.deepcopy(pl_module)
        module.load_state_dict(averaged)
        loader = trainer.datamodule.train_dataloader()
        with contextlib.ExitStack() as stack:
            if trainer.precision == LIGHTNING_PRECISIONS["bf16"]:
                stack.enter_context(torch.autocast(module.device.type, dtype=torch.bfloat16))
            batches = (
                batch["image"].to(module.device) for batch, _ in zip(loader, range(self.reestimate_batches))
            )
            reestimate_batch_norm(module, batches, module.model_logits)  # the network as training feeds it
        return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
