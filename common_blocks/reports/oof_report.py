"""``severstal report``: the HTML report of an ensemble from what ``severstal oof`` left behind.

Everything but the worst images comes from the saved OOF statistics, the tuned thresholds and the run
folders; only the k worst-scored validation images are predicted again, each by its own fold's models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from common_blocks.errors import DataError
from common_blocks.evaluation.metric import summarize
from common_blocks.evaluation.oof_stats import OofStats
from common_blocks.evaluation.threshold_search import SearchResult, evaluate
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.oof_search import training_data
from common_blocks.inference.predictor import build_predictor
from common_blocks.inference.submission import ReadTolerantDataset
from common_blocks.reports.page import WorstImage, build_report, worst_images
from common_blocks.run_folder import RunPaths
from common_blocks.training.checkpoints import load_checkpoint
from common_blocks.training.folds_file import labelled_folds


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path} not found: run `severstal oof --config ...` first")
    return path


def run_dirs(cfg: EnsembleConfig) -> list[Path]:
    """Every training run of the ensemble (members and gate), fold by fold."""
    return [RunPaths.of(cfg.runs_dir, ref.name, fold).root for ref in cfg.runs for fold in ref.folds]


def predict_worst(
    cfg: EnsembleConfig,
    result: SearchResult,
    table: pd.DataFrame,
    images_dir: Path,
    ranked: list[tuple[str, float]],
) -> list[WorstImage]:
    """Predicted masks of the ranked images, each by the models of the fold it was held out of."""
    scores = dict(ranked)
    chosen = table[table["ImageId"].isin(scores)].reset_index(drop=True)
    worst = []
    for fold, of_fold in chosen.groupby("fold"):
        predictor = build_predictor(cfg, [int(fold)], postprocess=result.config)
        dataset = ReadTolerantDataset(
            of_fold.reset_index(drop=True), images_dir, grayscale=predictor.grayscale, with_masks=False
        )
        for item in (dataset[index] for index in range(len(dataset))):
            if item["error"]:
                raise DataError(item["error"])
            _, masks = predictor.predict_masks(item["image"][None])
            worst.append(WorstImage(item["image_id"], scores[item["image_id"]], masks[0]))
    return sorted(worst, key=lambda image: image.score)


def ensemble_report(cfg: EnsembleConfig, out_dir: str | os.PathLike, n_worst: int = 8) -> Path:
    """Write ``out_dir/index.html`` for the ensemble; returns its path."""
    stats = OofStats.load(_require(cfg.oof_path))
    result = SearchResult.load(_require(cfg.thresholds_path))
    # The configs the runs were trained with (inside their checkpoints), as the OOF search reads them:
    # a sweep's `--set data.folds_file=...` is in them, not in configs/NAME.yaml.
    trained = {
        ref.name: load_checkpoint(ref.checkpoint_path(cfg.runs_dir, ref.folds[0])).cfg for ref in cfg.runs
    }
    data = training_data(cfg, trained)
    table = labelled_folds(data)
    table = table[table["ImageId"].isin(set(stats.image_ids.tolist()))].reset_index(drop=True)
    images_dir = Path(data.data.data_dir) / "train_images"
    ranked = worst_images(stats, result.config, n_worst)
    return build_report(
        out_dir,
        title=f"{cfg.name}: out-of-fold report",
        table=table,
        stats=stats,
        result=result,
        run_dirs=run_dirs(cfg),
        images_dir=images_dir,
        worst=predict_worst(cfg, result, table, images_dir, ranked) if ranked else None,
        cv_summary=summarize(evaluate(stats, result.config)),
    )
