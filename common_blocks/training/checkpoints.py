"""The one way to read a trained checkpoint: every reader (checkpoint scoring, inference, OOF,
pseudo-labels, reports, export, the bundle) rebuilds the network from the config inside it, offline:
prediction the plain ``network.DefectNetwork``, without Lightning; scoring a checkpoint on its fold
the training module (``load_checkpoint(..., kind=DefectModule)``).

The encoder is built without its pretrained ``encoder_weights``: the checkpoint's state dict replaces
them, and an offline machine (a Kaggle kernel, a server without the hub) can neither download
ImageNet weights nor has the training machine's weight files. The saved config is kept as it was.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from common_blocks.errors import PipelineError
from common_blocks.training.network import DefectNetwork

_ZIP_MAGIC = b"PK\x03\x04"  # how every torch.save file since torch 1.6 begins
# What torch.load and load_state_dict raise for a truncated, foreign or mismatched file.
_UNREADABLE = (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError)
Network = TypeVar("Network", bound=DefectNetwork)


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    channels_last: bool | None = None,
    kind: type[Network] = DefectNetwork,
) -> Network:
    """The trained network of ``path`` in eval mode on ``device``, as a ``kind`` (the plain network, or
    a subclass: the training module); ``channels_last`` overrides the config's
    ``trainer.channels_last`` (inference always uses it: faster on CPU and GPU).

    A missing, truncated, empty or foreign file is a PipelineError naming it.
    """
    path = Path(path)
    checkpoint = _read(path)
    try:
        hparams = checkpoint["hyper_parameters"]
        config = hparams["config"]
        if channels_last is not None:
            config["trainer"]["channels_last"] = channels_last
        module = kind(config, hparams.get("fold"), pretrained=False)
        module.load_state_dict(module.weights_in(checkpoint["state_dict"]))
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None
    except _UNREADABLE as error:
        raise PipelineError(
            f"{path}: not a readable checkpoint of this pipeline ({_detail(error)})"
        ) from None
    return module.eval().to(device)


def _read(path: Path) -> dict[str, Any]:
    """The checkpoint dictionary of ``path``; a PipelineError naming it when it is missing or is no
    torch file (truncated, empty, garbage)."""
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    with path.open("rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if not head:
        raise PipelineError(f"{path}: not a readable checkpoint of this pipeline (the file is empty)")
    if head != _ZIP_MAGIC:
        # torch.save writes zip archives; torch's fallback unpickler fails on arbitrary bytes with
        # whatever error the bytes happen to trigger, so anything else is refused before it runs
        raise PipelineError(
            f"{path}: not a readable checkpoint of this pipeline (not a torch checkpoint: no zip archive)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as error:
        if isinstance(error, pickle.UnpicklingError):
            # torch's text suggests loading it with weights_only=False: never for a file that is no checkpoint
            detail = "not a torch checkpoint, or one holding objects other than tensors and plain data"
        elif "zip archive" in str(error):  # a cut archive has no central directory
            detail = "truncated or damaged, not a complete checkpoint file"
        else:
            detail = _detail(error)
        raise PipelineError(f"{path}: not a readable checkpoint of this pipeline ({detail})") from None
    if not isinstance(checkpoint, dict):
        raise PipelineError(f"{path}: not a readable checkpoint of this pipeline (no dictionary inside)")
    return checkpoint


_DETAIL_LENGTH = 300


def _detail(error: BaseException) -> str:
    """The first line of ``error``'s message (with the next one when it only introduces a list)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    # torch lists every missing and unexpected key on that line: kilobytes, of which the first name it
    return text if len(text) <= _DETAIL_LENGTH else text[: _DETAIL_LENGTH - 3] + "..."


@dataclass(frozen=True)
class ResumePoint:
    """Where a training checkpoint (``last.ckpt``) left off."""

    path: Path
    epoch: int  # the epoch it was written in (0-based), Lightning's ``current_epoch``
    global_step: int
    epochs_done: int  # epochs whose training finished; the resumed fit starts at this epoch or in it
    # The logger step of the resumed run's first row: the CSV log's earlier rows are the checkpoint's.
    first_logged_step: int
    state_dict: dict[str, torch.Tensor]


def read_resume_point(path: str | os.PathLike, max_epochs: int, fit_may_be_over: bool = False) -> ResumePoint:
    """The training state of ``path`` for ``--resume`` with ``trainer.max_epochs`` = ``max_epochs``.

    A PipelineError naming the file when it is missing, unreadable, not a training checkpoint of
    this pipeline (a foreign file, or one with the weights only), or when it has already trained
    ``max_epochs`` epochs or more (the fit would do nothing) unless ``fit_may_be_over`` (the run
    stopped after its fit, before its final validation: resuming finishes that); reading changes
    nothing.
    """
    path = Path(path)
    checkpoint = _read(path)
    try:
        if not isinstance(checkpoint["hyper_parameters"]["config"], dict):
            raise TypeError("the saved config is not a mapping")
        state_dict = checkpoint["state_dict"]
        fit_loop = checkpoint["loops"]["fit_loop"]
        epoch, global_step = int(checkpoint["epoch"]), int(checkpoint["global_step"])
        epochs = fit_loop["epoch_progress"]["total"]
        batches = fit_loop["epoch_loop.batch_progress"]
        stepped = int(fit_loop["epoch_loop.state_dict"].get("_batches_that_stepped", global_step))
        if not checkpoint["optimizer_states"]:
            raise KeyError("optimizer_states")
        # Written mid-epoch after a training batch (completed lags processed): that batch's row is
        # logged after the checkpoint and Lightning counts the batch on resume, so the resumed run
        # logs from the next step on.
        after_batch = int(batches["total"]["completed"]) == int(batches["total"]["processed"]) - 1
        first_logged_step = stepped + 1 if after_batch else stepped
        epochs_done = int(epochs["processed"])
        # Written after the last training batch of an epoch, before its validation: the resumed fit
        # counts that epoch as trained (Lightning skips ahead to the next one).
        if int(epochs["started"]) == epochs_done + 1 and batches.get("is_last_batch"):
            epochs_done += 1
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PipelineError(
            f"{path}: not a training checkpoint of this pipeline, cannot resume from it "
            f"({type(error).__name__}: {_detail(error)})"
        ) from None
    if epochs_done >= max_epochs and not fit_may_be_over:
        relation = "equal to" if epochs_done == max_epochs else "more than"
        raise PipelineError(
            f"{path}: --resume has nothing to train: the checkpoint has trained {epochs_done} epoch(s), "
            f"{relation} trainer.max_epochs {max_epochs}; raise it (e.g. --set trainer.max_epochs="
            f"{epochs_done + 1}) to train on"
        )
    return ResumePoint(path, epoch, global_step, epochs_done, first_logged_step, state_dict)


def check_weights_fit(point: ResumePoint, module: DefectNetwork) -> None:
    """A PipelineError naming the checkpoint when its weights do not fit ``module`` (the run's config
    builds another model than the one it was trained with)."""
    load_fitting_weights(point.path, point.state_dict, module, "cannot resume from it")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint of this pipeline (best, averaged or last) for staged training; a
    PipelineError naming the file when it is missing, unreadable or holds no weights."""
    path = Path(path)
    checkpoint = _read(path)
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict) or not state_dict:
        raise PipelineError(f"{path}: not a checkpoint of this pipeline (no state_dict of weights)")
    return state_dict


def load_fitting_weights(
    path: Path, state_dict: dict[str, torch.Tensor], module: DefectNetwork, consequence: str
) -> None:
    """Load ``state_dict`` (from ``path``) into ``module`` with strictly matching names and shapes; a
    one-line PipelineError naming the file and ending in ``consequence`` otherwise."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise PipelineError(
            f"{path}: its weights do not fit the model of this config, {consequence} ({_detail(error)})"
        ) from None
