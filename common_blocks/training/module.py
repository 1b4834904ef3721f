"""The LightningModule: one model of any family, its loss, its optimiser and the validation score."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F

from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import PipelineError
from common_blocks.evaluation.oof_stats import OofStats, OofStatsBuilder
from common_blocks.evaluation.threshold_search import search
from common_blocks.run_folder import MONITORED, TRAIN_LOSS, VAL_LOSS, VAL_SCORE, VAL_TUNED_SCORE
from common_blocks.training.competition_score import CompetitionScore
from common_blocks.training.config import TrainConfig
from common_blocks.training.losses import (
    CLASSIFICATION_MODE,
    build_loss,
    num_outputs_for_mode,
    probabilities,
    targets_for_mode,
)
from common_blocks.training.models import build_model
from common_blocks.training.optim import build_optimizer, build_scheduler

PAD_MULTIPLE = 32  # FPN and Unet halve the resolution five times


class NonFiniteLossError(PipelineError):
    """The training loss became NaN or infinite; the run stops before the step is applied."""


class DefectModule(L.LightningModule):
    """Segmentation (multilabel / binary / multiclass) or the image-level classifier gate.

    The resolved config is saved in every checkpoint (``hparams.config``), so
    ``checkpoints.load_checkpoint(path)`` rebuilds the model without the YAML; ``fold`` is saved
    too, so a checkpoint knows which images it may be validated on. ``pretrained=False`` builds the
    encoder without its ``encoder_weights`` (not saved: the weights about to be loaded replace them).
    """

    def __init__(self, config: dict[str, Any], fold: int | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["pretrained"])
        self.fold = fold
        self.cfg = TrainConfig.model_validate(config)
        self.task_mode = CLASSIFICATION_MODE if self.is_classifier else self.cfg.mode
        model_cfg = self.cfg.model_for_input()
        if not pretrained:
            model_cfg = model_cfg.model_copy(update={"args": {**model_cfg.args, "encoder_weights": None}})
        head = None if self.cfg.class_head is None else self.cfg.class_head.network_args()
        self.model = build_model(model_cfg, num_outputs_for_mode(self.task_mode), class_head=head)
        self.loss = build_loss(self.cfg.loss, self.task_mode)
        self.val_score = CompetitionScore()
        self.tunes_score = self.cfg.validation.tuned_score and not self.is_classifier
        self.val_stats = self._new_stats_builder()
        if self.cfg.trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._compiled = False

    def configure_model(self) -> None:
        """``trainer.compile``: the network compiled in place (its parameter names, and so the
        checkpoints, stay as they are); Lightning calls this before fitting or validating, so
        prediction, which builds the module without a Trainer, never compiles."""
        if self.cfg.trainer.compile and not self._compiled:
            self.model.compile()
            self._compiled = True

    def _new_stats_builder(self) -> OofStatsBuilder:
        oof = self.cfg.oof
        return OofStatsBuilder(oof.thresholds, oof.min_sizes, (oof.fill_holes,) * N_CLASSES)

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

    def _class_loss(self, class_logits: torch.Tensor | None, batch: dict[str, Any]) -> torch.Tensor | None:
        """The class head's BCE against which classes the (cropped, augmented) mask holds (any pixel
        of it: the training mask may come area-averaged to the network's resolution)."""
        if class_logits is None:
            return None
        present = targets_for_mode((batch["mask"] > 0).float(), CLASSIFICATION_MODE)
        return F.binary_cross_entropy_with_logits(
            class_logits.float(), present, weight=batch.get("class_weight")
        )

    def mask_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of model-resolution ``logits``: the (uint8) mask is area-averaged down to their size,
        unless the loader already did (training batches: ``SegmentationDataset``'s ``mask_scale``).

        Losses at the model's resolution: upsampling 4 logit channels to 256x1600 and back
        through the loss would cost more than the network itself at ``data.scale`` 0.25. A batch with
        ``class_weight`` (pseudo-labels that leave classes out) passes it to the loss.
        """
        class_weight = batch.get("class_weight")
        if self.is_classifier:
            return self.loss(logits, batch["target"], class_weight)
        mask = batch["mask"].float()
        if mask.shape[-2:] != logits.shape[-2:]:
            mask = F.interpolate(mask, size=logits.shape[-2:], mode="area")
        return self.loss(logits, targets_for_mode(mask, self.task_mode), class_weight)

    def _total_loss(
        self, logits: torch.Tensor, class_logits: torch.Tensor | None, batch: dict[str, Any], stage: str
    ) -> torch.Tensor:
        """The loss, plus the class head's BCE times its weight (logged as ``STAGE/loss_class``)."""
        loss = self.mask_loss(logits, batch)
        class_loss = self._class_loss(class_logits, batch)
        if class_loss is None:
            return loss
        self.log(f"{stage}/loss_class", class_loss, batch_size=logits.shape[0], sync_dist=stage == "val")
        return loss + self.cfg.class_head.loss_weight * class_loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._total_loss(*self.model_outputs(batch["image"]), batch, "train")
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, global step {self.global_step} "
                f"(batch {batch_idx}); the run stopped before applying it, the last good checkpoint is kept"
            )
        batch_size = batch["image"].shape[0]
        self.log(TRAIN_LOSS, loss, prog_bar=True, batch_size=batch_size)
        for name, value in self.loss.last_terms.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """The loss and the score's sums of one batch, all on the batch's device: the full-resolution
        probabilities never cross to the CPU (the score's sums do, once per epoch, in ``summary``).
        The probabilities are ``input_size_probabilities``'s, so the tuned score is the local CV of
        this checkpoint alone, bit for bit."""
        images = batch["image"]
        logits, class_logits = self.model_outputs(images)
        batch_size = images.shape[0]
        self.log(
            VAL_LOSS,
            self._total_loss(logits, class_logits, batch, "val"),
            batch_size=batch_size,
            sync_dist=True,
        )
        probs = self.input_size_probabilities(logits, images)
        truth = batch["target"] if self.is_classifier else batch["mask"]
        self.val_score.update(probs, truth, self.cfg.validation.threshold, self.cfg.validation.min_area)
        if self.tunes_score:
            self.val_stats.add(batch["image_id"], probs.cpu().numpy(), truth.cpu().numpy())
        return {"probs": probs}

    def _tuned_score(self) -> float:
        """The competition score of the epoch's validation images under the post-processing searched
        on them: ``severstal oof``'s exact search for this one model without TTA (optimistic)."""
        stats = self.val_stats.build()
        self.val_stats = self._new_stats_builder()
        if dist.is_available() and dist.is_initialized():
            parts: list[OofStats | None] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, stats)
            stats = OofStats.merge(parts)
        return search(stats, gates=(0.0,)).score if stats.n_images else float("nan")

    def on_validation_epoch_end(self) -> None:
        summary = self.val_score.summary()
        self.val_score.reset()
        self.log(VAL_SCORE, summary.score, prog_bar=True)
        self.log("val/positive_dice", summary.positive_dice)
        for class_id, value in summary.per_class.items():
            self.log(f"val/score_class{class_id}", value)
        self.last_tuned_score = self._tuned_score() if self.tunes_score else None
        if self.last_tuned_score is not None:
            self.log(VAL_TUNED_SCORE, self.last_tuned_score)
        self.last_summary = summary

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.model, self.cfg.optimizer)
        monitor = MONITORED[self.cfg.trainer.monitor]
        scheduler = build_scheduler(optimizer, self.cfg.scheduler, self.cfg.trainer.max_epochs, monitor)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
