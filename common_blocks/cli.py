"""The ``severstal`` command line: one subcommand per job, each loading only what it needs.

Every command checks its arguments before anything heavy loads, reports bad input as one line
``error: ...`` with exit status 2 (130 on Ctrl-C) and never prints a traceback for it. The root
scripts ``train.py``, ``inference.py``, ``validate.py`` and ``pseudolabel.py`` call ``main`` with
their commands, so ``python train.py ...`` and ``severstal train ...`` are the same thing.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common_blocks.backend_names import BACKENDS, PRECISIONS
from common_blocks.cluster.availability import EXECUTORS
from common_blocks.errors import ConfigError, DataError, PipelineError, cli_entry
from common_blocks.files import (
    OutputError,
    check_apart,
    check_output_dir,
    check_output_file,
    is_write_failure,
)

if TYPE_CHECKING:
    from common_blocks.inference.ensemble_config import EnsembleConfig


class _Parser(argparse.ArgumentParser):
    """argparse with the pipeline's contract: a usage mistake is one ``error: ...`` line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def _output_path(text: str) -> Path:
    """An argparse type: a path to write to; empty is a mistake (``Path("")`` would be the working
    directory)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


POSITIVE = integer_at_least(1)
NON_NEGATIVE = integer_at_least(0)


def strict_json(value: object) -> object:
    """``value`` with every NaN or infinite number replaced by None (JSON null) and numpy scalars
    made plain numbers, so that ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def print_json(value: object) -> None:
    """Print one line of strict JSON (RFC 8259: no bare NaN or Infinity); every ``--json`` uses it."""
    print(json.dumps(strict_json(value), allow_nan=False))


def _existing_file(path: Path, option: str) -> None:
    if not path.is_file():
        problem = "is a folder, expected a file" if path.is_dir() else "file not found"
        raise DataError(f"{path}: {problem} ({option})")


def _not_an_input(out: Path, option: str, *inputs: Path) -> None:
    """An output must not replace a file the same command reads."""
    for source in inputs:
        if out.is_file() and source.is_file() and out.samefile(source):
            raise ConfigError(f"{out}: {option} is an input of this command ({source}); write elsewhere")


def _apart_from_ensemble(out: Path, what: str, cfg: EnsembleConfig, config: Path, *reads: Path) -> None:
    """``out`` (a folder the command writes into) is not, and lies not inside, what it reads: the
    ensemble's data and runs, its configs, and ``reads`` (an export)."""
    holds, within = cfg.inputs(config)
    within += [("the export it reads (--exported)", path) for path in reads]
    check_apart(out, what, holds=holds, within=within)


def _config_options(parser: argparse.ArgumentParser, what: str, data_dir: str, example: str) -> None:
    """``--config``, ``--data-dir`` and ``--set`` of every command that reads a config."""
    parser.add_argument("--config", required=True, type=Path, help=what)
    parser.add_argument("--data-dir", type=Path, help=f"overrides the config's data directory: {data_dir}")
    _set_option(parser, f"override a config key, e.g. --set {example}")


def _set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set key.path=value``, repeatable, into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{help_text} (repeatable; values are YAML)",
    )


def _loader_options(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--workers`` of the commands that predict a folder of images."""
    parser.add_argument("--batch-size", type=POSITIVE, default=4, help="images per batch (default 4)")
    parser.add_argument(
        "--workers",
        type=NON_NEGATIVE,
        help="image-decoding processes (default: 0 on the CPU, where a worker takes a core from the "
        "model; 2 with a GPU)",
    )


def _backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision`` and ``--exported`` of the commands that predict."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="what runs the networks: torch (the checkpoints; default), openvino or onnxruntime (their ONNX "
        "export, on the CPU; optional extras), auto (torch on CUDA, else the fastest installed)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="the networks' arithmetic: fp32 (default), bf16 (CUDA, or a CPU with avx512_bf16/amx_bf16), "
        "fp16 (CUDA)",
    )
    parser.add_argument(
        "--exported",
        type=Path,
        metavar="DIR",
        help="with openvino/onnxruntime: the networks `severstal export` wrote (default: exported now "
        "into a temporary folder)",
    )


def _backend(args: argparse.Namespace) -> str:
    """The backend ``--backend``, ``--precision`` and ``--exported`` choose, checked before anything loads."""
    from common_blocks.deploy.backends import choose_backend

    return choose_backend(args.backend, args.precision, args.exported)


def _runtime(args: argparse.Namespace, backend: str, cfg):
    """The context holding the chosen backend's ``Runtime`` (None for torch), for ``build_predictor``."""
    from common_blocks.deploy.backends import backend_runtime

    return backend_runtime(backend, cfg, args.exported)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _with_data_dir(args: argparse.Namespace, key: str) -> list[str]:
    """The ``--set`` overrides, plus ``--data-dir`` as the override of ``key``."""
    return [*args.overrides, *([f"{key}={args.data_dir}"] if args.data_dir is not None else [])]


def _ensemble(args: argparse.Namespace):
    from common_blocks.inference.ensemble_config import load_ensemble_config

    return load_ensemble_config(args.config, _with_data_dir(args, "data_dir"))


ENSEMBLE_YAML = "ensemble YAML (configs/ensemble.yaml)"


# --- train ------------------------------------------------------------------------------------------


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _config_options(
        parser, "YAML config of the model family", "train.csv, train_images/", "trainer.max_epochs=5"
    )
    parser.add_argument("--fold", required=True, type=NON_NEGATIVE, help="validation fold (0-based)")
    parser.add_argument(
        "--out-dir", type=_output_path, default=Path("runs"), help="runs root (default: runs)"
    )
    parser.add_argument("--devices", type=POSITIVE, default=1, help="processes/GPUs for DDP (default 1)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from OUT_DIR/NAME/foldK/last.ckpt")
    resume.add_argument("--overwrite", action="store_true", help="discard earlier checkpoints of this fold")
    parser.add_argument("--pseudo", type=Path, help="pseudo-label CSV mixed into training batches")
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start from this checkpoint's weights (an earlier stage; same model), fresh optimiser and schedule",
    )


def _train(args: argparse.Namespace) -> None:
    check_output_dir(args.out_dir, "the runs folder (--out-dir)")
    from common_blocks.training.config import load_config

    overrides = _with_data_dir(args, "data.data_dir")
    if args.pseudo is not None:
        overrides.append(f"pseudo.labels={args.pseudo}")
    if args.init_from is not None:
        if args.init_from.suffix != ".ckpt" or not args.init_from.is_file():
            raise PipelineError(f"--init-from {args.init_from}: expected an existing .ckpt file")
        overrides.append(f"init_from={json.dumps(str(args.init_from))}")
    cfg = load_config(args.config, overrides)
    from common_blocks.run_folder import RunPaths

    check_output_dir(RunPaths.of(args.out_dir, cfg.name, args.fold).root, "the run folder")
    check_apart(args.out_dir, "the runs (--out-dir)", holds=[], within=[("the data_dir", cfg.data.data_dir)])
    from common_blocks.training.runner import train_fold  # the model stack only once the config is valid

    summary = train_fold(cfg, args.fold, args.out_dir, args.devices, args.resume, args.overwrite)
    print_json({k: summary[k] for k in ("name", "fold", "score", "positive_dice", "best_checkpoint")})


# --- infer ------------------------------------------------------------------------------------------


def _infer_arguments(parser: argparse.ArgumentParser) -> None:
    _config_options(parser, ENSEMBLE_YAML, "test_images/, sample_submission.csv", "tta=[none]")
    parser.add_argument(
        "--out", type=_output_path, default=Path("submission.csv"), help="default submission.csv"
    )
    parser.add_argument("--format", choices=("current", "2019"), default="current", help="submission format")
    _loader_options(parser)
    _backend_options(parser)
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="predict no defect for unreadable images, list them"
    )
    parser.add_argument("--image", type=Path, help="predict this one image instead and print its classes")
    parser.add_argument("--overlay", type=_output_path, help="with --image: write a PNG with the masks drawn")
    parser.add_argument("--truth", type=Path, help="with --image: label CSV whose masks are drawn in red")


def _infer(args: argparse.Namespace) -> None:
    if args.image is None and (args.overlay or args.truth):
        raise ConfigError("--overlay and --truth need --image")
    if args.image is not None:  # the inputs and the output are checked before any model loads
        _existing_file(args.image, "--image")
        if args.truth is not None:
            _existing_file(args.truth, "--truth")
        if args.overlay is not None:
            check_output_file(args.overlay, "the overlay PNG (--overlay)")
            _not_an_input(args.overlay, "--overlay", args.image, *([args.truth] if args.truth else []))
    else:
        check_output_file(args.out, "the submission (--out)")
    backend = _backend(args)
    cfg = _ensemble(args)
    if args.image is None:
        _not_an_input(args.out, "--out", cfg.data_dir / "sample_submission.csv")
    from common_blocks.inference.predictor import build_predictor
    from common_blocks.inference.submission import make_submission, submission_image_ids

    image_ids = None if args.image else submission_image_ids(cfg.data_dir)  # bad data fails before loading
    postprocess, source = cfg.resolved_postprocess()
    print(source)
    with _runtime(args, backend, cfg) as runtime:
        predictor = build_predictor(cfg, postprocess=postprocess, precision=args.precision, runtime=runtime)
        if args.image is not None:
            from common_blocks.reports.single_image import show_prediction

            print(show_prediction(predictor, args.image, args.overlay, args.truth))
            return
        report = make_submission(
            predictor,
            cfg.data_dir / "test_images",
            image_ids,
            args.out,
            args.format,
            args.batch_size,
            args.workers,
            args.skip_bad_images,
        )
    print(report.format())


# --- oof, score, checkpoint, report -----------------------------------------------------------------


def _oof_arguments(parser: argparse.ArgumentParser) -> None:
    _config_options(parser, ENSEMBLE_YAML, "train.csv, train_images/, the folds file", "tta=[none]")
    _loader_options(parser)
    _backend_options(parser)
    _json_option(parser)


def _oof(args: argparse.Namespace) -> None:
    backend = _backend(args)
    cfg = _ensemble(args)
    from common_blocks.inference.oof import run_oof

    with _runtime(args, backend, cfg) as runtime:
        report = run_oof(cfg, args.batch_size, args.workers, args.precision, runtime)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.format())


def _score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", required=True, type=Path, help="submission CSV (current or 2019)")
    parser.add_argument("--truth", required=True, type=Path, help="label CSV (current or 2019 format)")
    parser.add_argument(
        "--images", type=Path, help="image folder: the set of images scored (needed for current-format truth)"
    )
    _json_option(parser)


def _score(args: argparse.Namespace) -> None:
    from common_blocks.evaluation.scorer import score_submission

    summary = score_submission(args.submission, args.truth, args.images)
    if args.json:
        print_json(summary.to_dict())
    else:
        print(summary.format())


def _checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="best.ckpt or last.ckpt of a run")
    parser.add_argument("--data-dir", type=Path, help="overrides the data directory saved in the checkpoint")
    _set_option(
        parser, "override a key of the saved config for this evaluation, e.g. --set data.valid_batch_size=2"
    )
    _json_option(parser)


def _checkpoint(args: argparse.Namespace) -> None:
    from common_blocks.training.runner import evaluate_checkpoint

    summary = evaluate_checkpoint(args.checkpoint, _with_data_dir(args, "data.data_dir"))
    if args.json:
        print_json(summary.to_dict())
    else:
        print(summary.format())


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    _config_options(
        parser,
        f"{ENSEMBLE_YAML}, after `severstal oof` ran on it",
        "train.csv, train_images/",
        "runs_dir=runs/exp2",
    )
    parser.add_argument(
        "--out", required=True, type=_output_path, help="output folder for index.html and its PNGs"
    )
    parser.add_argument(
        "--worst", type=POSITIVE, default=8, help="worst-scored validation images to show (default 8)"
    )


def _report(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "the report folder (--out)")
    cfg = _ensemble(args)
    _apart_from_ensemble(args.out, "the report (--out)", cfg, args.config)
    from common_blocks.reports.oof_report import ensemble_report

    print(f"report written to {ensemble_report(cfg, args.out, args.worst)}")


# --- pseudo -----------------------------------------------------------------------------------------


def _pseudo_arguments(parser: argparse.ArgumentParser) -> None:
    _config_options(parser, ENSEMBLE_YAML, "test_images/", "runs_dir=runs/exp2")
    parser.add_argument(
        "--round",
        required=True,
        type=POSITIVE,
        dest="round_number",
        metavar="R",
        help="round number (1, 2, ...)",
    )
    parser.add_argument(
        "--out-dir",
        type=_output_path,
        default=Path("pseudo"),
        help="where round<R>.csv goes (default: pseudo)",
    )
    parser.add_argument(
        "--p-high",
        type=_probability,
        default=0.95,
        help="gate probability above which a class is sure (0.95)",
    )
    parser.add_argument(
        "--p-low", type=_probability, default=0.05, help="gate probability below which it is absent (0.05)"
    )
    _loader_options(parser)
    _backend_options(parser)


def _pseudo(args: argparse.Namespace) -> None:
    from common_blocks.pseudo.selection import SelectionSummary

    summary = SelectionSummary(args.p_high, args.p_low)  # checks the thresholds before anything loads
    check_output_dir(args.out_dir, "the pseudo-label folder (--out-dir)")
    backend = _backend(args)
    cfg = _ensemble(args)
    exported = [args.exported] if args.exported is not None else []
    _apart_from_ensemble(args.out_dir, "the pseudo-labels (--out-dir)", cfg, args.config, *exported)
    from common_blocks.pseudo.rounds import round_path

    for suffix in (".csv", "_summary.json"):
        check_output_file(round_path(args.out_dir, args.round_number, suffix), "a pseudo-label round file")
    cfg.resolved_postprocess()  # a thresholds file that cannot be read fails before any model loads
    from common_blocks.pseudo.rounds import pseudo_label_round

    with _runtime(args, backend, cfg) as runtime:
        report, _ = pseudo_label_round(
            cfg,
            args.round_number,
            args.out_dir,
            summary,
            args.batch_size,
            args.workers,
            precision=args.precision,
            runtime=runtime,
        )
    print(summary.format())
    print(f"wrote {report['labels']}")
    for error in report["unreadable_images"]:
        print(f"warning: left out, unreadable: {error}", file=sys.stderr)
    if summary.kept == 0:
        print(
            f"warning: round {args.round_number} kept no test image; training with {report['labels']} "
            "uses the real images only (lower --p-high / raise --p-low, or improve the ensemble)",
            file=sys.stderr,
        )


# --- export -----------------------------------------------------------------------------------------


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    _config_options(
        parser, ENSEMBLE_YAML, "its images check the export (test_images/, else train_images/)", "tta=[none]"
    )
    parser.add_argument(
        "--out", required=True, type=_output_path, help="folder for the .onnx files and manifest.json"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def _export(args: argparse.Namespace) -> None:
    from common_blocks.deploy.export import check_export_folder, export_ensemble

    check_export_folder(args.out, args.overwrite)
    cfg = _ensemble(args)
    from common_blocks.deploy.runtimes import installed_runtimes

    runtimes = installed_runtimes()  # the export is checked under every one installed
    manifest = export_ensemble(cfg, args.out, runtimes, config_path=args.config, overwrite=args.overwrite)
    print(manifest["postprocess_source"])
    for network in manifest["networks"]:
        differences = ", ".join(
            f"{name} {value:.1e}" for name, value in network["largest_difference"].items()
        )
        print(
            f"  {network['file']}: {network['role']} {network['run']} fold {network['fold']} ({differences})"
        )
    print(
        f"wrote {args.out}: {len(manifest['networks'])} network(s) and manifest.json; probabilities within "
        f"{manifest['check']['tolerance']:g} of PyTorch on {len(manifest['check']['images'])} image(s)"
    )


# --- sweep ------------------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    """An argparse type: ``KEY=VALUE`` with a non-empty key and value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a name, got an empty string")
    return text


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        help=f"{ENSEMBLE_YAML}: every run of its members and gate is trained",
    )
    parser.add_argument(
        "--executor",
        required=True,
        choices=EXECUTORS,
        help="slurm: submit a job array with sbatch and return; local: run the jobs on this machine and wait",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="overrides the ensemble's data_dir, which every run trains on and the OOF search validates on",
    )
    _set_option(parser, "override a key of every run's training config, e.g. --set trainer.max_epochs=5")
    parser.add_argument(
        "--out-dir",
        type=_output_path,
        help="runs root (default: the ensemble's runs_dir); logs in OUT_DIR/sweep_logs",
    )
    parser.add_argument(
        "--pseudo", type=Path, metavar="CSV", help="pseudo-label CSV mixed into every run's training batches"
    )
    parser.add_argument("--train-only", action="store_true", help="train the runs, without the OOF search")
    resources = parser.add_argument_group("resources of each job")
    resources.add_argument(
        "--gpus-per-job",
        type=NON_NEGATIVE,
        metavar="N",
        help="GPUs (one DDP process each) per node of a training job (default: slurm 1; local 1 with a GPU, else 0)",
    )
    resources.add_argument(
        "--timeout-min",
        type=POSITIVE,
        metavar="MIN",
        help="time limit of a job in minutes; at it the job is requeued and resumes (default: slurm 240; local none)",
    )
    resources.add_argument(
        "--array-parallelism",
        type=POSITIVE,
        metavar="K",
        help="training jobs running at once (default: slurm all; local one per GPU group, 1 without a GPU)",
    )
    resources.add_argument(
        "--num-nodes",
        type=POSITIVE,
        default=1,
        metavar="N",
        help="nodes of one run's DDP (slurm only; default 1)",
    )
    resources.add_argument("--partition", type=_non_empty, metavar="P", help="Slurm partition")
    resources.add_argument(
        "--slurm-option",
        dest="slurm_options",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="another sbatch option for every job, e.g. --slurm-option account=abc --slurm-option mem=64G",
    )
    resources.add_argument(
        "--wait",
        action="store_true",
        help="slurm: wait for the jobs and fail as they do (local always waits)",
    )
    _loader_options(parser)  # of the OOF search


def _sweep(args: argparse.Namespace) -> None:
    if args.executor == "local":
        slurm_only = [
            option
            for option, given in (
                ("--partition", args.partition is not None),
                ("--num-nodes", args.num_nodes > 1),
                ("--slurm-option", bool(args.slurm_options)),
            )
            if given
        ]
        if slurm_only:
            raise ConfigError(
                f"{', '.join(slurm_only)}: only with --executor slurm (the local executor runs on this machine)"
            )
    if args.out_dir is not None:
        check_output_dir(args.out_dir, "the runs folder (--out-dir)")
    if args.pseudo is not None:
        _existing_file(args.pseudo, "--pseudo")
    from common_blocks.cluster.availability import check_executor

    check_executor(args.executor)  # what to install, before any config or model loads
    from common_blocks.cluster.local import run_local
    from common_blocks.cluster.plan import plan_sweep
    from common_blocks.cluster.resources import resolve_resources
    from common_blocks.cluster.slurm import submit_slurm

    resources = resolve_resources(
        args.executor,
        args.gpus_per_job,
        args.timeout_min,
        args.array_parallelism,
        args.num_nodes,
        args.partition,
        dict(args.slurm_options),
    )
    plan = plan_sweep(
        args.config,
        train_overrides=args.overrides,
        data_dir=args.data_dir,
        pseudo=args.pseudo,
        out_dir=args.out_dir,
        train_only=args.train_only,
        devices=resources.devices,
        num_nodes=resources.num_nodes,
    )
    check_apart(
        plan.out_dir, "the runs (--out-dir)", holds=[], within=[("the data_dir", plan.ensemble.data_dir)]
    )
    if args.executor == "slurm":
        submit_slurm(plan, resources, args.batch_size, args.workers, args.wait)
    else:
        run_local(plan, resources, args.batch_size, args.workers)


# --- data: folds, synthetic, dataset ----------------------------------------------------------------


def _folds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="folder with train.csv and train_images/"
    )
    parser.add_argument(
        "--n-folds", type=integer_at_least(2), default=10, help="number of folds (default 10)"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--out", type=_output_path, help="output CSV (default DATA_DIR/folds.csv)")


def _folds(args: argparse.Namespace) -> None:
    from common_blocks.data.folds import write_folds
    from common_blocks.data.formats import read_labels

    out = args.out or args.data_dir / "folds.csv"
    # The labels first: reading them is cheap, and a missing DATA_DIR is better told as such than
    # as an unwritable default --out inside it.
    table = read_labels(args.data_dir / "train.csv", args.data_dir / "train_images")
    check_output_file(out, "the folds CSV (--out)")
    _not_an_input(out, "--out", args.data_dir / "train.csv")
    sizes = write_folds(table, args.n_folds, args.seed, out)["fold"].value_counts()
    print(f"wrote {out}: {len(table)} images in {args.n_folds} folds of {sizes.min()}-{sizes.max()} images")


def _synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=_output_path, required=True, help="folder to write the data set into")
    parser.add_argument(
        "--n-train", type=NON_NEGATIVE, default=200, help="number of train images (default 200)"
    )
    parser.add_argument("--n-test", type=NON_NEGATIVE, default=50, help="number of test images (default 50)")
    parser.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=POSITIVE, default=2, help="worker threads (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")


def _synthetic(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "the data set folder (--out)")
    from common_blocks.data.synthetic import generate

    generate(args.out, args.n_train, args.n_test, args.seed, workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {args.n_train} train and {args.n_test} test images to {args.out}")


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="folder with train.csv and train_images/"
    )
    parser.add_argument(
        "--out", type=_output_path, required=True, help="folder to write the PNGs and index.html into"
    )
    parser.add_argument("--per-class", type=POSITIVE, default=4, help="sample images per class (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sample (default 0)")


def _dataset(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "the overview folder (--out)")
    check_apart(
        args.out, "the overview (--out)", holds=[], within=[("the data folder (--data-dir)", args.data_dir)]
    )
    from common_blocks.reports.dataset import dataset_overview

    print(f"wrote {dataset_overview(args.data_dir, args.out, args.per_class, args.seed)}")


# --- bundle -----------------------------------------------------------------------------------------


def _bundle_arguments(parser: argparse.ArgumentParser) -> None:
    _config_options(
        parser,
        f"{ENSEMBLE_YAML} whose checkpoints and tuned thresholds go into the bundle",
        "written into the bundled config: where the notebook finds test_images/ "
        "(default /kaggle/input/severstal-steel-defect-detection)",
        "runs_dir=runs/exp2",
    )
    parser.add_argument(
        "--out", required=True, type=_output_path, help="the bundle folder, to upload as a Kaggle dataset"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    parser.add_argument(
        "--kaggle-dataset",
        metavar="NAME",
        help="the dataset's slug on Kaggle (the end of its URL): the notebook reads /kaggle/input/NAME "
        "(default: --out's folder name)",
    )
    wheels = parser.add_mutually_exclusive_group()
    wheels.add_argument(
        "--wheels-from",
        type=Path,
        metavar="DIR",
        help="copy the dependency wheels from this folder instead of downloading them from PyPI",
    )
    wheels.add_argument(
        "--no-dependency-wheels",
        action="store_true",
        help="bundle only the project's wheel: the notebook's image has every dependency",
    )


def _bundle(args: argparse.Namespace) -> None:
    from common_blocks.deploy.bundle import DEPENDENCY_WHEELS, check_bundle_folder, dataset_name

    check_bundle_folder(args.out, args.overwrite)
    dataset_name(args.out, args.kaggle_dataset)
    if args.wheels_from is not None and not args.wheels_from.is_dir():
        raise DataError(f"{args.wheels_from}: no such folder (--wheels-from)")
    from common_blocks.inference.ensemble_config import load_ensemble_config

    cfg = load_ensemble_config(args.config, args.overrides)
    from common_blocks.deploy.bundle import build_bundle

    bundle = build_bundle(
        cfg,
        args.out,
        config_path=args.config,
        dataset=args.kaggle_dataset,
        data_dir=None if args.data_dir is None else str(args.data_dir),
        dependencies=() if args.no_dependency_wheels else DEPENDENCY_WHEELS,
        wheels_from=args.wheels_from,
        overwrite=args.overwrite,
    )
    for warning in bundle.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(bundle.format())


# --- weights ----------------------------------------------------------------------------------------


def _weights_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "list",
        help="the weights packages installed here and the encoders each fits",
        description="the weights packages installed here and the encoders each fits (checked by mapping)",
    )
    convert = actions.add_parser(
        "convert",
        help="a weights file (or package:DIST) in an encoder's own layout",
        description="write a weights file, or package:DIST, in an smp encoder's own layout, checked by a "
        "strict load; then encoder_weights: FILE needs nothing else installed",
    )
    convert.add_argument("source", metavar="SOURCE", help="a .pth/.pt/.bin/.safetensors file or package:DIST")
    convert.add_argument(
        "--encoder", required=True, help="smp encoder name, e.g. resnet34 or tu-efficientnet_lite0"
    )
    convert.add_argument(
        "--out", required=True, type=_output_path, help="the file to write (.safetensors, else a torch file)"
    )


def _weights(args: argparse.Namespace) -> None:
    if args.action == "list":
        from common_blocks.training.weights import WEIGHT_PACKAGES, installed_sources

        sources = installed_sources()
        for source in sources:
            fits = ", ".join(f"{name} ({layout})" for name, layout in source.fits.items()) or "none"
            print(f"{source.spec} {source.version}: {source.path}\n  fits {fits}")
        missing = [dist for dist in WEIGHT_PACKAGES if f"package:{dist}" not in {s.spec for s in sources}]
        if missing:
            print(f"not installed: {', '.join(missing)} (pip install NAME)")
        return
    target = check_output_file(args.out, "the converted weights (--out)")
    from common_blocks.training.weights import convert, resolve_source

    source = resolve_source(args.source, "SOURCE")
    if source is None or source == "imagenet":
        raise ConfigError(f"SOURCE: expected a weights file or package:DIST, got {args.source!r}")
    _not_an_input(target, "--out", source)
    layout, count = convert(args.source, args.encoder, target)
    print(f"wrote {target}: {count} tensors for {args.encoder}, read in {layout} layout")


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: dict[str, Command] = {
    "train": Command("train one fold of one model family", _train_arguments, _train),
    "infer": Command("predict the test images with an ensemble into a submission", _infer_arguments, _infer),
    "oof": Command(
        "ensemble local CV on out-of-fold images; tunes post-processing, appends a leaderboard row",
        _oof_arguments,
        _oof,
    ),
    "score": Command(
        "score a submission against labels (either format on either side)", _score_arguments, _score
    ),
    "checkpoint": Command(
        "score a trained checkpoint on its own validation fold", _checkpoint_arguments, _checkpoint
    ),
    "report": Command("HTML report of an ensemble's out-of-fold results", _report_arguments, _report),
    "pseudo": Command("one pseudo-label round over the test images", _pseudo_arguments, _pseudo),
    "export": Command(
        "every network of an ensemble as ONNX, checked against PyTorch, with a manifest",
        _export_arguments,
        _export,
    ),
    "sweep": Command(
        "train every run of an ensemble as a job array (Slurm or this machine), then its OOF search",
        _sweep_arguments,
        _sweep,
    ),
    "folds": Command("write folds.csv stratified on class combinations", _folds_arguments, _folds),
    "synthetic": Command("write a synthetic Severstal-like data set", _synthetic_arguments, _synthetic),
    "dataset": Command(
        "overview of a data set: sample images per class, class distribution", _dataset_arguments, _dataset
    ),
    "weights": Command(
        "offline pretrained weights: list what is installed, convert a file into an encoder's layout",
        _weights_arguments,
        _weights,
    ),
    "bundle": Command(
        "one folder to upload as a Kaggle dataset: checkpoints, config, thresholds, wheels, notebook lines",
        _bundle_arguments,
        _bundle,
    ),
}


def build_parser(prog: str = "severstal", commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``commands`` (default: all) as subcommands; one command alone is the parser
    itself (``python train.py --config ...`` takes no subcommand)."""
    names = list(commands or COMMANDS)
    if len(names) == 1:
        command = COMMANDS[names[0]]
        parser = _Parser(prog=prog, description=command.help)
        command.arguments(parser)
        parser.set_defaults(run=command.run)
        return parser
    parser = _Parser(prog=prog, description="Severstal steel defect detection: train, ensemble, score.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in names:
        command = COMMANDS[name]
        sub = subcommands.add_parser(name, help=command.help, description=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


@cli_entry
def main(
    argv: Sequence[str] | None = None, prog: str = "severstal", commands: Sequence[str] | None = None
) -> None:
    """Parse ``argv`` and run the chosen command (``severstal --help`` lists them)."""
    args = build_parser(prog, commands).parse_args(argv)
    try:
        args.run(args)
    except OSError as error:  # a write the storage refused outside atomic_output, which names its file
        if not is_write_failure(error):
            raise  # anything else is a bug, with its traceback
        what = f"{error.filename}: cannot write it" if error.filename else "cannot write an output"
        raise OutputError(f"{what} ({error.strerror or error})") from None
