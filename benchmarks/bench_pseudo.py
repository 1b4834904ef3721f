"""Pseudo-labelling, measured on synthetic data, whose test labels are known.

    python -m benchmarks.bench_pseudo [--n-train 120] [--n-test 60] [--folds 0] [--epochs 6]
                                      [--gate-epochs 6] [--p-high 0.95] [--p-low 0.05] [--work-dir DIR]

1. Round 0: train the debug segmenter and debug gate on ``--folds`` (4-fold split); the ensemble's
   local CV (``validate.py oof``: out-of-fold images, tuned post-processing) is the baseline.
2. Round 1: pseudo-label the test images with that ensemble. Precision of the kept labels: their
   competition score against the true test labels, beside the score of the ensemble's predictions on
   all test images (what the selection is meant to beat), re-judged at looser thresholds as well
   (from the round's gate probabilities, without predicting again).
3. Retrain segmenter and gate with ``--pseudo`` and the same seeds, epochs and batches per epoch as
   round 0 (``samples_per_epoch`` lowered by the pseudo fraction: equal compute, real images swapped
   for pseudo-labelled ones), and compare the local CV, and each fold's validation score.

The defaults take about 5-10 minutes on 2 CPU cores. Debug models on a small synthetic set: the
numbers say whether the mechanism works end to end and how precise the kept labels are, not what
pseudo-labelling gains on Severstal.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import doc_parser
from common_blocks.data.formats import RLE_COLUMNS, read_labels
from common_blocks.data.synthetic import generate
from common_blocks.evaluation.metric import score_tables, summarize
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.oof_search import run_oof
from common_blocks.inference.options import PredictOptions
from common_blocks.pseudo.rounds import (
    GATE_COLUMNS,
    pseudo_label_round,
)
from common_blocks.pseudo.selection import SelectionSummary
from common_blocks.run_folder import RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.folds_file import labelled_folds, write_missing_folds
from common_blocks.training.runner import train_fold

ROOT = Path(__file__).resolve().parents[1]
SEGMENTER, GATE = ROOT / "configs" / "debug.yaml", ROOT / "configs" / "debug_classifier.yaml"
SWEEP = ((0.95, 0.05), (0.9, 0.1), (0.8, 0.2), (0.7, 0.3))  # (p_high, p_low) pairs re-judged after the round


def train_round(args, data: Path, runs: Path, pseudo: Path | None) -> dict[str, list[float]]:
    """Train segmenter and gate on every fold; each fold's validation score, per family.

    With pseudo-labels, ``samples_per_epoch`` (real images per epoch) shrinks by the pseudo fraction,
    so that an epoch has as many batches as without them.
    """
    scores: dict[str, list[float]] = {}
    for config, epochs in ((SEGMENTER, args.epochs), (GATE, args.gate_epochs)):
        base = [f"data.data_dir={data}", f"trainer.max_epochs={epochs}"]
        cfg = load_config(config, base)
        write_missing_folds(cfg)
        folds = labelled_folds(cfg)["fold"]
        scores[cfg.name] = []
        for fold in args.folds:
            overrides = list(base)
            if pseudo is not None:
                real_per_epoch = round(int((folds != fold).sum()) * (1 - cfg.pseudo.fraction))
                overrides += [f"pseudo.labels={pseudo}", f"data.samples_per_epoch={real_per_epoch}"]
            summary = RunPaths.of(runs, cfg.name, fold).summary
            if summary.is_file():  # a kept --work-dir: this run is done
                scores[cfg.name].append(json.loads(summary.read_text())["score"])
            else:
                scores[cfg.name].append(train_fold(load_config(config, overrides), fold, runs)["score"])
    return scores


def ensemble(runs: Path, data: Path, folds: list[int]) -> EnsembleConfig:
    return EnsembleConfig(
        name="bench_pseudo",
        runs_dir=runs,
        data_dir=data,
        members=[{"config": str(SEGMENTER), "folds": folds}],
        gate={"config": str(GATE), "folds": folds},
        leaderboard=runs / "leaderboard.csv",
    )


def label_scores(predictions: pd.DataFrame, truth: pd.DataFrame, p_high: float, p_low: float) -> dict:
    """What the rule keeps at these thresholds, and the competition score of the kept labels against the
    truth; re-judged from the predictions' gate probabilities and mask presence, without predicting again."""
    summary = SelectionSummary(p_high, p_low)
    present = (predictions[list(RLE_COLUMNS)] != "").to_numpy()
    gates = predictions[list(GATE_COLUMNS)].to_numpy()
    kept = np.array([summary.add(g, p.reshape(-1, 1, 1)) for g, p in zip(gates, present, strict=True)], bool)
    scored = predictions.loc[kept, ["ImageId", *RLE_COLUMNS]]
    score = (
        summarize(score_tables(scored, truth[truth["ImageId"].isin(scored["ImageId"])]))
        if kept.any()
        else None
    )
    return {**summary.to_dict(), "kept_labels_score": score.to_dict() if score else None}


def run(args, work: Path) -> dict:
    """The benchmark in ``work``; what an earlier run with the same sizes left there is reused (data set,
    round-0 runs, round-1 runs of the same thresholds), so other thresholds cost only round 1."""
    work = work / f"n{args.n_train}-{args.n_test}-seed{args.seed}"
    data, runs0 = work / "data", work / f"runs0-e{args.epochs}-{args.gate_epochs}"
    runs1 = runs0.with_name(f"{runs0.name}-p{args.p_high}-{args.p_low}")
    labels_dir = work / f"pseudo-p{args.p_high}-{args.p_low}"
    if not (data / "test_labels.csv").is_file():
        generate(data, args.n_train, args.n_test, seed=args.seed, workers=2)
    truth = read_labels(data / "test_labels.csv", data / "test_images")
    result: dict = {"sizes": {k: v for k, v in vars(args).items() if k != "work_dir"}}
    result["fold_scores_round0"] = train_round(args, data, runs0, None)
    result["local_cv_round0"] = run_oof(ensemble(runs0, data, args.folds)).summary.score
    summary = SelectionSummary(args.p_high, args.p_low)
    report, predictions = pseudo_label_round(
        ensemble(runs0, data, args.folds), 1, labels_dir, summary, PredictOptions(workers=0)
    )
    result["selection"] = summary.to_dict()
    labels = predictions[["ImageId", *RLE_COLUMNS]]
    result["all_test_labels_score"] = summarize(score_tables(labels, truth)).to_dict()
    result["threshold_sweep"] = [label_scores(predictions, truth, *pair) for pair in SWEEP]
    if summary.kept:  # else round 1 would train exactly as round 0
        result["fold_scores_round1"] = train_round(args, data, runs1, Path(report["labels"]))
        result["local_cv_round1"] = run_oof(ensemble(runs1, data, args.folds)).summary.score
    return result


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument(
        "--folds", type=int, nargs="+", default=[0], help="folds of the 4-fold split (default 0)"
    )
    parser.add_argument("--epochs", type=int, default=6, help="segmenter epochs per round (default 6)")
    parser.add_argument("--gate-epochs", type=int, default=6, help="gate epochs per round (default 6)")
    parser.add_argument("--p-high", type=float, default=0.95)
    parser.add_argument("--p-low", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep data and runs here, reused by later runs (default: a temporary folder)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        result = run(args, args.work_dir or Path(temporary))
    result["seconds"] = round(time.perf_counter() - started)
    print("\n== pseudo-labelling benchmark")
    print(f"all test predictions vs truth: score {result['all_test_labels_score']['score']:.4f}")
    for row in result["threshold_sweep"]:
        score = row["kept_labels_score"]
        print(
            f"p_high {row['p_high']:.2f} p_low {row['p_low']:.2f}: kept {row['images_kept']}/{row['images_considered']}"
            + (f", kept labels vs truth {score['score']:.4f} (FP pairs {score['false_positive_pairs']}, "
               f"FN pairs {score['false_negative_pairs']})" if score else "")
        )  # fmt: skip
    if "local_cv_round1" in result:
        cv0, cv1 = result["local_cv_round0"], result["local_cv_round1"]
        print(f"local CV: round 0 {cv0:.5f} -> round 1 {cv1:.5f} ({cv1 - cv0:+.5f})")
        for name, scores in result["fold_scores_round0"].items():
            print(f"{name} fold scores: round 0 {scores} -> round 1 {result['fold_scores_round1'][name]}")
    else:
        print(f"local CV round 0 {result['local_cv_round0']:.5f}; round 1 kept nothing, so no retraining")
    print(f"{result['seconds']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
