"""The LightningModule: the plain network (``network``) with its loss, its optimiser and the validation score."""

from __future__ import annotations

from collections.abc import Mapping
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
from common_blocks.training.losses import build_loss, targets_for_mode
from common_blocks.training.modes import CLASSIFICATION_MODE
from common_blocks.training.network import DefectNetwork
from common_blocks.training.optim import build_optimizer, build_scheduler


class NonFiniteLossError(PipelineError):
    """The training loss became NaN or infinite; the run stops before the step is applied."""


class DefectModule(DefectNetwork, L.LightningModule):
    """The plain network (``network.DefectNetwork``: its input, outputs and task mode) with what
    training adds: its loss, optimiser and validation score.

    The resolved config is saved in every checkpoint (``hparams.config``), so
    ``checkpoints.load_checkpoint(path)`` rebuilds the network without the YAML; ``fold`` is saved
    too. The state dict is the network's (``model.``) and the loss's buffers, as it always was.
    """

    def __init__(self, config: dict[str, Any], fold: int | None = None, pretrained: bool = True) -> None:
        super().__init__(config, fold, pretrained)
        self.save_hyperparameters(ignore=["pretrained"])
        self.loss = build_loss(self.cfg.loss, self.task_mode)
        self.val_score = CompetitionScore()
        self.tunes_score = self.cfg.validation.tuned_score and not self.is_classifier
        self.val_stats = self._new_stats_builder()
        self._compiled = False

    def weights_in(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All of a checkpoint's state dict: the network's weights and the loss's buffers."""
        return dict(state_dict)

    def configure_model(self) -> None:
        """``trainer.compile``: the network compiled in place (its parameter names, and so the
        checkpoints, stay as they are); Lightning calls this before fitting or validating, so
        prediction, which builds the network without a Trainer, never compiles."""
        if self.cfg.trainer.compile and not self._compiled:
            self.model.compile()
            self._compiled = True

    def _new_stats_builder(self) -> OofStatsBuilder:
        oof = self.cfg.oof
        return OofStatsBuilder(oof.thresholds, oof.min_sizes, (oof.fill_holes,) * N_CLASSES)

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
