"""Stand-in networks for predictor tests: the interface of ``DefectModule`` that inference uses."""

import torch
from torch import nn


class StandIn(nn.Module):
    """``forward`` gives logits at the input's size, so ``model_logits`` is ``forward`` and there is
    nothing to resize back."""

    def __init__(self, task_mode: str) -> None:
        super().__init__()
        self.task_mode = task_mode

    def model_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)

    def to_input_size(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        assert logits.shape[-2:] == images.shape[-2:]
        return logits
