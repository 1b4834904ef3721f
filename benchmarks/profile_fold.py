"""Where a training fold's time goes: Lightning's ``SimpleProfiler`` over a run as a user trains it.

    python -m benchmarks.profile_fold --config configs/cpu_small.yaml [--epochs 2] [--set KEY=VALUE ...]

Trains fold 0 of the real sample for ``--epochs`` epochs exactly as ``train.py`` does (the loader,
the per-epoch validation at full resolution with its tuned-score search, the checkpoints), then
validates the best checkpoint as ``train_fold`` does at its end. Prints the wall time of building the
model, of the fit and of the final validation, and the profiler's actions grouped into the parts of
an epoch (per epoch): the training steps (forward, loss, backward, optimiser), waiting for the
training loader, the validation steps, the epoch-end score and tuned search, checkpoint writing.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

# isort: off
import common_blocks.training  # noqa: F401  (first: declares the torchvision ops lightning needs)

# isort: on
from lightning.pytorch.profilers import SimpleProfiler

from benchmarks.common import doc_parser, peak_rss_mib, require_real_sample
from benchmarks.train_timing import add_run_arguments, cpu_config
from common_blocks.run_folder import RunPaths
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.module import DefectModule
from common_blocks.training.runner import build_trainer, lightning_warnings_that_do_not_apply

# Profiler action name fragments -> the part of an epoch they belong to (first match wins).
PARTS = (
    ("train_dataloader_next", "training loader wait"),
    ("optimizer_step", "training step (forward, backward, optimiser)"),  # holds training_step, backward
    ("val_next", "validation loader wait"),
    ("validation_step", "validation steps (network, full-size probabilities, statistics)"),
    ("on_validation_epoch_end", "validation epoch end (score, tuned search)"),
    ("ModelCheckpoint", "checkpoint writing"),
    ("TopKWeights", "checkpoint writing"),
)
# Actions that contain others (counting them too would count their time twice).
ENCLOSING = ("run_training_epoch", "run_training_batch", "training_step", "backward")


def part_of(action: str) -> str | None:
    if any(fragment in action for fragment in ENCLOSING):
        return None
    return next((part for fragment, part in PARTS if fragment in action), None)


def main() -> None:
    parser = doc_parser(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    require_real_sample(args.data_dir)
    with tempfile.TemporaryDirectory() as folder:
        cfg = cpu_config(args, Path(folder), [f"trainer.max_epochs={args.epochs}"])
        datamodule = SteelDataModule(cfg, 0)
        start = time.perf_counter()
        module = DefectModule(cfg.model_dump(mode="json"), 0)
        built = time.perf_counter()
        profiler = SimpleProfiler()
        paths = RunPaths(Path(folder) / "run")
        paths.root.mkdir(parents=True)
        trainer, _ = build_trainer(cfg, paths, "cpu", 1, profiler=profiler)
        with lightning_warnings_that_do_not_apply():
            trainer.fit(module, datamodule=datamodule)
            fitted = time.perf_counter()
            fit_actions = {
                action: sum(durations) for action, durations in profiler.recorded_durations.items()
            }
            trainer.validate(module, datamodule=datamodule, ckpt_path=paths.best, verbose=False)
        validated = time.perf_counter()
    per_part: dict[str, float] = defaultdict(float)
    for action, seconds in fit_actions.items():
        part = part_of(action)
        if part is not None:
            per_part[part] += seconds
    epochs = args.epochs
    fit = fitted - built
    print(
        f"{cfg.name}: fold 0, {epochs} epochs, batch {cfg.data.batch_size}, workers {cfg.data.num_workers}, "
        f"threads {torch.get_num_threads()}, precision {cfg.trainer.precision}, "
        f"{len(datamodule.train_table)} train / {len(datamodule.valid_table)} validation images"
    )
    print(f"{'model built (weights loaded)':<62} {built - start:7.1f} s")
    print(f"{'fit':<62} {fit:7.1f} s  ({fit / epochs:.1f} s per epoch)")
    print(f"{'final validation of best.ckpt':<62} {validated - fitted:7.1f} s")
    print("per epoch:")
    accounted = 0.0
    for part, seconds in sorted(per_part.items(), key=lambda item: -item[1]):
        accounted += seconds
        print(f"  {part:<60} {seconds / epochs:7.2f} s")
    print(f"  {'the rest (loop, logging, callbacks, start-up)':<60} {(fit - accounted) / epochs:7.2f} s")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
