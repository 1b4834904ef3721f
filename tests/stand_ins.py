"""Test helpers: stand-in networks with the interface of ``DefectNetwork`` that inference uses, and
untrained checkpoints written the way training writes them."""

import os

import torch
from torch import nn

from common_blocks.training.modes import CLASSIFICATION_MODE


class StandIn(nn.Module):
    """``forward`` gives logits at the input's size, so ``model_logits`` is ``forward`` and there is
    nothing to resize back."""

    def __init__(self, task_mode: str) -> None:
        super().__init__()
        self.task_mode = task_mode

    @property
    def has_class_head(self) -> bool:
        return False

    @property
    def can_gate(self) -> bool:
        """A classification stand-in is a gate, as a classifier's ``DefectNetwork`` is."""
        return self.task_mode == CLASSIFICATION_MODE

    @property
    def resizes_logits(self) -> bool:
        return False

    def model_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        assert self.can_gate
        return self(images)

    def to_input_size(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        assert logits.shape[-2:] == images.shape[-2:]
        return logits


def save_untrained(module: nn.Module, path: str | os.PathLike) -> None:
    """Write ``module`` as Lightning's trainer writes a checkpoint (untrained members for tests)."""
    import lightning  # here: the caller has imported common_blocks.training, which lightning needs first

    trainer = lightning.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint, as training writes
