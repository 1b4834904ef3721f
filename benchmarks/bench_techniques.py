"""The checkpoint-selection techniques, measured on finished runs that kept every epoch's weights.

    python -m benchmarks.bench_techniques RUN_FOLDER [RUN_FOLDER ...] [--top-k 5] [--splits 20]

Each run must have been trained with ``trainer.average_top_k`` >= its epochs (so ``top_k/`` holds
every epoch) and ``validation.tuned_score`` on. Per run and per way of choosing the weights — the
epoch of the best ``val/score``, of the best ``val/tuned_score``, the last epoch, the mean of the
``--top-k`` best epochs by either score (batch norm averaged or re-estimated on 20 training
batches) — it predicts the run's validation fold once and reports from its out-of-fold statistics:

* ``fixed``: the score at the run's fixed validation post-processing (threshold, minimum area);
* ``tuned``: the score under post-processing searched on the same images (optimistic);
* ``cross``: post-processing searched on a random half of the images and scored on the other half,
  both ways, averaged over ``--splits`` random halvings (an honest estimate of the tuned score;
  its spread over the halvings is printed too);
* ``dice+``: the mean Dice of the positive pairs under the cross-tuned post-processing, and
  ``dice+1`` .. ``dice+4`` the same per class (what tells whether a rare class is found at all).

A run with a class head (``class_head``) also gets ``gated_tuned``, ``gated_cross`` and
``gated_dice+``: the same with its head as the gate, gate thresholds and soft factors searched too
(``validate.py oof``'s default gate grid and factors x2, x5 and the hard gate).

Epoch choice by the tuned score is itself made on the same images, so its ``tuned`` and ``cross``
figures are still optimistic by the choice among epochs; compare runs of different seeds for noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import doc_parser
from common_blocks.data.formats import N_CLASSES
from common_blocks.evaluation.metric import summarize
from common_blocks.evaluation.oof_stats import OofStats, OofStatsBuilder
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.evaluation.search_grid import DEFAULT_GATES
from common_blocks.evaluation.threshold_search import evaluate, search
from common_blocks.run_folder import VAL_SCORE, VAL_TUNED_SCORE, RunPaths
from common_blocks.training.averaging import average_state_dicts, reestimate_batch_norm
from common_blocks.training.checkpoints import load_checkpoint
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule

_FIELDS = ("image_ids", "folds", "area", "intersection", "truth_area", "gate")


def subset(stats: OofStats, index: np.ndarray) -> OofStats:
    return OofStats(
        thresholds=stats.thresholds,
        min_sizes=stats.min_sizes,
        fill_holes=stats.fill_holes,
        **{name: getattr(stats, name)[index] for name in _FIELDS},
    )


NO_GATE = {"gates": (0.0,)}
HEAD_GATE = {"gates": DEFAULT_GATES, "gate_factors": (2.0, 5.0, None)}


def cross_tuned(
    stats: OofStats, splits: int, grid: dict, seed: int = 0
) -> tuple[float, float, float, np.ndarray]:
    """(mean score, its std over halvings, mean positive-pair Dice, that Dice per class) with
    post-processing tuned on one half of the images (``search`` over ``grid``) and scored on the other."""
    generator = np.random.default_rng(seed)
    scores, dice, per_class = [], [], []
    for _ in range(splits):
        order = generator.permutation(stats.n_images)
        halves = order[: stats.n_images // 2], order[stats.n_images // 2 :]
        sums = None
        for tune, score_on in (halves, halves[::-1]):
            config = search(subset(stats, tune), **grid).config
            part = evaluate(subset(stats, score_on), config)
            sums = part if sums is None else sums + part
        summary = summarize(sums)
        scores.append(summary.score)
        dice.append(summary.positive_dice)
        per_class.append(sums.positive_dice / np.maximum(sums.positives, 1))
    return float(np.mean(scores)), float(np.std(scores)), float(np.mean(dice)), np.mean(per_class, axis=0)


@torch.inference_mode()
def fold_stats(module, datamodule: SteelDataModule) -> OofStats:
    """The fold's statistics as validation and the predictor compute them (activated at the network's
    resolution, then resized), with the class head's probabilities as the gate when there is one."""
    oof = module.cfg.oof
    builder = OofStatsBuilder(oof.thresholds, oof.min_sizes, (oof.fill_holes,) * N_CLASSES)
    for batch in datamodule.val_dataloader():
        images = batch["image"]
        logits, class_logits = module.model_outputs(images)
        probs = module.input_size_probabilities(logits, images)
        gate = None if class_logits is None else class_logits.sigmoid().numpy()
        builder.add(batch["image_id"], probs.numpy(), batch["mask"].numpy(), gate=gate)
    return builder.build()


def evaluate_weights(module, datamodule, state: dict, splits: int) -> dict[str, float]:
    module.load_state_dict(state)
    stats = fold_stats(module.eval(), datamodule)
    fixed = PostprocessConfig(
        classes=[
            ClassPostprocess(
                threshold=module.cfg.validation.threshold, min_area=module.cfg.validation.min_area
            )
        ]
        * N_CLASSES
    )
    cross, spread, dice, per_class = cross_tuned(stats, splits, NO_GATE)
    row = {
        "fixed": summarize(evaluate(stats, fixed)).score,
        "tuned": search(stats, **NO_GATE).score,
        "cross": cross,
        "cross_sd": spread,
        "dice+": dice,
        **{f"dice+{c}": float(v) for c, v in enumerate(per_class, start=1)},
    }
    if stats.has_gate:
        cross, _, dice, _ = cross_tuned(stats, splits, HEAD_GATE)
        row.update(
            {"gated_tuned": search(stats, **HEAD_GATE).score, "gated_cross": cross, "gated_dice+": dice}
        )
    return row


def reestimated(module, datamodule, state: dict, batches: int = 20) -> dict:
    module.load_state_dict(state)
    loader = datamodule.train_dataloader()
    images = (batch["image"] for batch, _ in zip(loader, range(batches)))
    reestimate_batch_norm(module, images, module.model_logits)
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def measure(root: Path, top_k: int, splits: int) -> pd.DataFrame:
    paths = RunPaths(root)
    metrics = pd.read_csv(paths.metrics).dropna(subset=[VAL_SCORE])
    epochs = {int(path.stem.removeprefix("epoch")): path for path in paths.top_k.glob("epoch*.pt")}
    metrics = metrics[metrics["epoch"].isin(epochs)].drop_duplicates("epoch").set_index("epoch")
    module = load_checkpoint(paths.best, kind=DefectModule)
    datamodule = SteelDataModule(module.cfg, module.fold)
    datamodule.setup("fit")
    weights = {epoch: torch.load(path, weights_only=True)["state_dict"] for epoch, path in epochs.items()}
    choices: dict[str, dict] = {}
    for metric, label in ((VAL_SCORE, "score"), (VAL_TUNED_SCORE, "tuned")):
        ranked = metrics[metric].sort_values(ascending=False, kind="stable").index.tolist()
        choices[f"best epoch by {label} ({ranked[0]})"] = weights[ranked[0]]
        mean = average_state_dicts([weights[epoch] for epoch in ranked[:top_k]])
        choices[f"mean of top {top_k} by {label}"] = mean
        choices[f"mean of top {top_k} by {label}, BN re-estimated"] = reestimated(module, datamodule, mean)
    last = max(weights)
    choices[f"last epoch ({last})"] = weights[last]
    rows = []
    for name, state in choices.items():
        row = {"run": str(root), "weights": name, **evaluate_weights(module, datamodule, state, splits)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders OUT_DIR/NAME/foldK")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--splits", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    table = pd.concat([measure(root, args.top_k, args.splits) for root in args.runs])
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


if __name__ == "__main__":
    main()
