"""The network as prediction uses it: a plain ``nn.Module`` built from a training config, which owns
the input and output conventions of every model family.

``DefectNetwork`` takes a normalised float32 ``(B, C, H, W)`` batch, resizes it by ``data.scale``,
pads it to a multiple of 32 and runs the model (smp or timm, ``models.MODELS``); it gives the logits
at the model's own resolution (``model_logits``), the same resized to the input (``forward``,
``to_input_size``), and a gate's ``(B, 4)`` image-level logits (``class_logits``). Its ``task_mode``
(``modes``) says what the logits mean.

Training's LightningModule (``module.DefectModule``) is this network with its loss, optimiser and
validation added; its state dict is the network's (the ``model.`` keys) plus the loss's buffers, so a
checkpoint of training loads into the plain network (``checkpoints.load_checkpoint``) without Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common_blocks.errors import PipelineError
from common_blocks.training.config import TrainConfig
from common_blocks.training.models import build_model
from common_blocks.training.modes import CLASSIFICATION_MODE, num_outputs_for_mode, probabilities

PAD_MULTIPLE = 32  # FPN and Unet halve the resolution five times
WEIGHTS_PREFIX = "model."  # the network's weights in a state dict: its model's


class DefectNetwork(nn.Module):
    """Segmentation (multilabel / binary / multiclass) or the image-level classifier gate.

    Built from a resolved training config (the one a checkpoint saves, ``hparams.config``) and the
    ``fold`` it was validated on, which a checkpoint records so that it knows which images it may be
    scored on. ``pretrained=False`` builds the encoder without its ``encoder_weights`` (the weights
    about to be loaded replace them, and an offline machine has neither the hub nor the files).
    """

    def __init__(self, config: dict[str, Any], fold: int | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.fold = fold
        self.cfg = TrainConfig.model_validate(config)
        self.task_mode = CLASSIFICATION_MODE if self.is_classifier else self.cfg.mode
        model_cfg = self.cfg.model_for_input()
        if not pretrained:
            model_cfg = model_cfg.model_copy(update={"args": {**model_cfg.args, "encoder_weights": None}})
        head = None if self.cfg.class_head is None else self.cfg.class_head.network_args()
        self.model = build_model(model_cfg, num_outputs_for_mode(self.task_mode), class_head=head)
        if self.cfg.trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def weights_in(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This network's weights in a checkpoint's state dict (the training module's): the model's
        ``model.`` keys, without the loss's buffers, which prediction has no use for."""
        return {key: value for key, value in state_dict.items() if key.startswith(WEIGHTS_PREFIX)}

    @property
    def is_classifier(self) -> bool:
        return self.cfg.task == "classification"

    @property
    def has_class_head(self) -> bool:
        """A segmenter that also predicts which classes are present (``class_head``)."""
        return self.cfg.class_head is not None

    @property
    def can_gate(self) -> bool:
        """Whether ``class_logits`` exists: a classifier, or a segmenter with a class head."""
        return self.is_classifier or self.has_class_head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the input's resolution (segmentation) or (B, 4) (classification).

        The model sees the image resized by ``data.scale``; the segmentation logits are resized
        back, so callers always work at full size.
        """
        return self.to_input_size(self.model_logits(images), images)

    @property
    def resizes_logits(self) -> bool:
        """Whether segmentation logits come at a lower resolution than the input (``data.scale`` < 1)
        and ``to_input_size`` resizes them."""
        return not self.is_classifier and self.cfg.data.scale < 1

    def to_input_size(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Segmentation ``logits`` (or any per-pixel maps) resized to the size of ``images``, bilinearly.

        The small map is made contiguous (class planes) first: resizing the network's channels-last
        output took twice as long here and gave a channels-last result that inference copies again.
        """
        if self.is_classifier or logits.shape[-2:] == images.shape[-2:]:
            return logits
        return F.interpolate(
            logits.contiguous(), size=images.shape[-2:], mode="bilinear", align_corners=False
        )

    def input_size_probabilities(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Probabilities at the size of ``images`` from model-resolution ``logits``: activated there, in
        fp32, then resized, as the ensemble predictor does by default (``average: probabilities``), so
        a score computed from them is the predictor's, bit for bit; the activation runs on 1/scale²
        fewer pixels."""
        return self.to_input_size(probabilities(logits.float(), self.task_mode), images)

    def _network_input(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``images`` as the network takes them: resized by ``data.scale``, padded to a multiple of 32,
        in the configured memory format; and the size before padding, to crop outputs back to."""
        scale = self.cfg.data.scale
        if scale != 1.0:
            images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        inner_h, inner_w = images.shape[-2:]
        pad_h, pad_w = -inner_h % PAD_MULTIPLE, -inner_w % PAD_MULTIPLE
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        if self.cfg.trainer.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, (inner_h, inner_w)

    def model_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits at the model's own resolution (the input resized by ``data.scale``; a classifier's
        are (B, 4)), and the class head's (B, 4) image-level logits (None without one)."""
        network_input, (inner_h, inner_w) = self._network_input(images)
        output = self.model(network_input)
        if self.is_classifier:
            return output, None
        logits, class_logits = output if self.has_class_head else (output, None)
        return logits[..., :inner_h, :inner_w], class_logits

    def model_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the model's own resolution: the input resized by ``data.scale``.

        The input is padded to a multiple of 32 for the network and the logits cropped back.
        """
        return self.model_outputs(images)[0]

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 4) image-level logits, for the gate: the classifier's, or the class head's, which reads
        the encoder's deepest features only, so a gate pass skips the decoder."""
        if self.is_classifier:
            return self.model_logits(images)
        if not self.has_class_head:
            raise PipelineError(f"{self.cfg.name} is a segmenter without a class head (class_head)")
        network_input, _ = self._network_input(images)
        return self.model.classification_head(self.model.encoder(network_input)[-1])
