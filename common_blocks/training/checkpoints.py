"""The one way to read a trained checkpoint: every reader (checkpoint scoring, inference, OOF,
pseudo-labels, reports) rebuilds the module from the config inside it, offline.

The encoder is built without its pretrained ``encoder_weights``: the checkpoint's state dict replaces
them, and an offline machine (a Kaggle kernel, a server without the hub) can neither download
ImageNet weights nor has the training machine's weight files. The saved config is kept as it was.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from common_blocks.errors import PipelineError
from common_blocks.training.module import DefectModule

# What torch.load and load_state_dict raise for a truncated, foreign or mismatched file.
_UNREADABLE = (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", channels_last: bool | None = None
) -> DefectModule:
    """The trained module of ``path`` in eval mode on ``device``; ``channels_last`` overrides the
    config's ``trainer.channels_last`` (inference always uses it: faster on CPU and GPU).

    A missing, truncated, empty or foreign file is a PipelineError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        config = hparams["config"]
        if channels_last is not None:
            config["trainer"]["channels_last"] = channels_last
        module = DefectModule(config, hparams.get("fold"), pretrained=False)
        module.load_state_dict(checkpoint["state_dict"])
    except PipelineError as error:
        raise PipelineError(f"{path}: {error}") from None
    except _UNREADABLE as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PipelineError(f"{path}: not a readable checkpoint of this pipeline ({detail})") from None
    return module.eval().to(device)
