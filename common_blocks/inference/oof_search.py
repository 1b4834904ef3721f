"""Local CV of an ensemble and its tuned post-processing, from out-of-fold predictions.

For every fold, the members and gate of that fold (which never trained on its validation images)
predict those images; the ensemble's statistics over all folds (``oof_stats``) are searched for the
best post-processing per class (``threshold_search``). Writes the thresholds JSON inference reads,
the statistics beside it, and a row of the leaderboard: all three or none (``check_outputs`` before
predicting, ``staged_outputs`` at the end), by one process at a time (``one_writer``).
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from common_blocks.data.formats import CLASS_IDS, N_CLASSES
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.metric import ScoreSummary, summarize
from common_blocks.evaluation.oof_stats import OofStatsBuilder
from common_blocks.evaluation.threshold_search import SearchResult, evaluate, search
from common_blocks.files import check_apart, check_output_file, staged_outputs
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.leaderboard import read_leaderboard, with_row
from common_blocks.inference.options import PredictOptions
from common_blocks.inference.predictor import EnsemblePredictor, Runtime, build_predictor
from common_blocks.inference.submission import ReadTolerantDataset, image_loader
from common_blocks.one_writer import one_writer
from common_blocks.training.config import TrainConfig
from common_blocks.training.folds_file import labelled_folds


def common_folds(cfg: EnsembleConfig) -> list[int]:
    """The folds to validate: every member and the gate must have the same ones, or fold scores would
    come from different ensembles."""
    folds = {ref.name: sorted(ref.folds) for ref in cfg.runs}
    if len({tuple(f) for f in folds.values()}) > 1:
        listed = ", ".join(f"{name} {f}" for name, f in folds.items())
        raise ConfigError(f"OOF validation needs the same folds for every member and the gate; got {listed}")
    return sorted(cfg.members[0].folds)


def _agreed(values: dict[str, object], key: str, fix: str) -> object:
    """The one value all runs have; an error listing which runs have which value otherwise."""
    runs_by_value: dict[str, list[str]] = {}
    for name, value in values.items():
        runs_by_value.setdefault(repr(value), []).append(name)
    if len(runs_by_value) > 1:
        listed = "; ".join(f"{', '.join(names)}: {value}" for value, names in runs_by_value.items())
        raise ConfigError(f"the runs' {key} differ ({listed}); {fix}")
    return next(iter(values.values()))


def training_data(cfg: EnsembleConfig, runs: dict[str, TrainConfig]) -> TrainConfig:
    """A run's config pointed at the ensemble's data; all runs must share the folds file."""
    split = {name: (run.data.folds_file, run.data.n_folds) for name, run in runs.items()}
    _agreed(split, "data.folds_file and data.n_folds", "OOF needs runs trained on one split")
    first = next(iter(runs.values()))
    folds_file = cfg.data_dir / first.data.folds_file
    if not folds_file.is_file():
        raise DataError(f"{folds_file}: not found; OOF needs the folds the members were trained on")
    return first.model_copy(update={"data": first.data.model_copy(update={"data_dir": cfg.data_dir})})


def search_grid(cfg: EnsembleConfig, segmenters: dict[str, TrainConfig]) -> dict[str, object]:
    """Thresholds, min_sizes and fill_holes to search: the ensemble's ``search`` values, else the
    segmentation runs' ``oof`` values, which must then agree."""
    grid = {}
    for key in ("thresholds", "min_sizes", "fill_holes"):
        chosen = getattr(cfg.search, key)
        if chosen is None:
            values = {name: getattr(run.oof, key) for name, run in segmenters.items()}
            chosen = _agreed(values, f"oof.{key}", f"set search.{key} in the ensemble config")
        grid[key] = chosen
    return grid


def add_fold(
    builder: OofStatsBuilder,
    predictor: EnsemblePredictor,
    table: pd.DataFrame,
    images_dir: Path,
    fold: int,
    batch_size: int,
    workers: int | None,
) -> None:
    """Add the statistics of the fold's validation images, as the fold's ensemble predicts them.

    Per batch the images cross to the predictor's device once (the gate and the segmenters share
    them) and the full-resolution probabilities come back once (``probabilities`` ends on the CPU;
    ``.numpy()`` is a view of it); the masks stay on the CPU."""
    valid = table[table["fold"] == fold].reset_index(drop=True)
    if valid.empty:
        raise DataError(f"fold {fold} has no validation images in {images_dir.parent}")
    dataset = ReadTolerantDataset(valid, images_dir, grayscale=predictor.grayscale)
    loader = image_loader(dataset, batch_size, workers, predictor.device)
    for batch in tqdm(loader, desc=f"fold {fold}", unit="batch", disable=None):
        errors = [error for error in batch["error"] if error]
        if errors:
            raise DataError(errors[0])
        images = predictor.to_device(batch["image"])
        builder.add(
            list(batch["image_id"]),
            predictor.probabilities(images).numpy(),
            batch["mask"].numpy(),  # uint8 from the dataset
            folds=fold,
            gate=predictor.gate_probabilities(images),
        )


@dataclass
class OofReport:
    result: SearchResult
    summary: ScoreSummary  # of the chosen post-processing, from ``evaluate``
    config_hash: str
    written: dict[str, Path]  # thresholds, oof statistics, leaderboard

    def format(self) -> str:
        lines = [f"local CV {self.summary.format()}", "chosen post-processing:"]
        for class_id, setting, score in zip(
            CLASS_IDS, self.result.config.classes, self.result.class_scores, strict=True
        ):
            shown = "  ".join(f"{name} {value}" for name, value in setting.rendered().items())
            lines.append(f"  class {class_id}: dice {score:.4f}  {shown}")
        lines += [f"wrote {what}: {path}" for what, path in self.written.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            **self.summary.to_dict(),
            "config_hash": self.config_hash,
            "postprocess": self.result.config.model_dump(mode="json"),
            **{what: str(path) for what, path in self.written.items()},
        }


def run_digest(cfg: EnsembleConfig, runs: dict[str, TrainConfig]) -> str:
    """Hash of the ensemble config and of the training configs of its checkpoints."""
    parts = [cfg.digest(), *sorted(f"{name}:{run.digest()}" for name, run in runs.items())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


def check_outputs(cfg: EnsembleConfig, config_path: Path | None = None, exported: Path | None = None) -> None:
    """Before any prediction: the three outputs are distinct files that can be written, none is, or
    lies inside, what the search reads (``EnsembleConfig.inputs``: ``config_path``, the data, the
    runs' checkpoints, the export ``exported``), and the leaderboard, if there is one, can be
    appended to."""
    outputs = {
        "the tuned thresholds (postprocess.thresholds_file)": cfg.thresholds_path,
        "the OOF statistics (beside the thresholds)": cfg.oof_path,
        "the leaderboard": cfg.leaderboard_path,
    }
    holds, within = cfg.inputs(config_path, exported=exported, folder=False, tuned=False)
    resolved: dict[Path, str] = {}
    for what, path in outputs.items():
        target = check_output_file(path, what).absolute()
        check_apart(path, what, holds=holds, within=within)
        if target in resolved:
            raise ConfigError(f"{path}: both {resolved[target]} and {what}; give them different files")
        resolved[target] = what
    read_leaderboard(cfg.leaderboard_path)


def run_oof(
    cfg: EnsembleConfig, options: PredictOptions = PredictOptions(), runtime: Runtime | None = None
) -> OofReport:
    """Validate each fold's ensemble on its fold, search the post-processing, write the outputs.

    ``options`` say how images are loaded and at which precision the networks run; ``runtime`` is
    ``build_predictor``'s: the backend that runs them (None: torch)."""
    folds = common_folds(cfg)
    cfg.check_checkpoints()
    check_outputs(cfg, exported=options.exported)
    # Two searches of one ensemble at once would each replace the other's files: one at a time.
    with one_writer(cfg.thresholds_path, "these tuned thresholds are being searched"):
        return _search(cfg, folds, options, runtime)


def _search(
    cfg: EnsembleConfig, folds: list[int], options: PredictOptions, runtime: Runtime | None
) -> OofReport:
    """``run_oof`` once its outputs are this process's to write."""
    segmenters: dict[str, TrainConfig] = {}
    gates: dict[str, TrainConfig] = {}
    builder: OofStatsBuilder | None = None
    for fold in folds:
        predictor = build_predictor(cfg, [fold], precision=options.precision, runtime=runtime)
        segmenters.update({f"{m.module.cfg.name}/fold{fold}": m.module.cfg for m in predictor.segmenters})
        gates.update({f"{m.module.cfg.name}/fold{fold}": m.module.cfg for m in predictor.gates})
        grid = search_grid(cfg, segmenters)  # the runs of every fold so far must agree
        if builder is None:
            builder = OofStatsBuilder(
                grid["thresholds"], grid["min_sizes"], (grid["fill_holes"],) * N_CLASSES
            )
            data = training_data(cfg, {**segmenters, **gates})
            table = labelled_folds(data)
        add_fold(
            builder,
            predictor,
            table,
            data.data.data_dir / "train_images",
            fold,
            options.batch_size,
            options.workers,
        )
    stats = builder.build()
    gate_grid = (cfg.gate.threshold,) if cfg.gate and cfg.gate.threshold is not None else cfg.search.gates
    result = search(stats, cfg.search.min_areas, gate_grid, cfg.search.gate_factors)
    summary = summarize(evaluate(stats, result.config))
    digest = run_digest(cfg, {**segmenters, **gates})
    row = {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config_hash": digest,
        "name": cfg.name,
        "members": cfg.describe_members(),
        "gate": f"{cfg.gate.name}[{','.join(map(str, cfg.gate.folds))}]" if cfg.gate else "",
        "tta": "+".join(cfg.tta),
        "n_images": summary.n_images,
        "score": f"{summary.score:.6f}",
        **{f"score_{c}": f"{summary.per_class[str(c)]:.6f}" for c in CLASS_IDS},
        "backend": "torch" if runtime is None else runtime.name,
        "precision": options.precision,
    }
    board = with_row(read_leaderboard(cfg.leaderboard_path), row)  # read again: it may have grown
    # All three are prepared before any replaces its file. Inference reads the thresholds and the
    # report reads them with the statistics, so the statistics go first, the thresholds (what a run
    # of inference picks up) next and the leaderboard row, which records the run as done, last; a
    # rename that fails puts back the files already renamed.
    with staged_outputs() as outputs:
        with outputs.file(cfg.oof_path, "the OOF statistics") as temporary:
            stats.save(temporary)
        with outputs.file(cfg.thresholds_path, "the tuned thresholds") as temporary:
            result.save(temporary)
        with outputs.file(cfg.leaderboard_path, "the leaderboard") as temporary:
            board.to_csv(temporary, index=False)
    written = {"thresholds": cfg.thresholds_path, "oof": cfg.oof_path, "leaderboard": cfg.leaderboard_path}
    return OofReport(result, summary, digest, written)
