"""``severstal sweep``: every run of an ensemble as a job array (Slurm or this machine), then its OOF
search."""

from __future__ import annotations

import argparse
from pathlib import Path

from common_blocks.arguments import NON_NEGATIVE, POSITIVE
from common_blocks.cli.checks import existing_file
from common_blocks.cli.options import (
    ENSEMBLE_YAML,
    add_predict_options,
    add_set_option,
    chosen_predict_options,
    key_value,
    non_empty,
    output_path,
    predict_options,
)
from common_blocks.cluster.availability import EXECUTORS
from common_blocks.errors import ConfigError
from common_blocks.files import check_apart, check_output_dir


def sweep_arguments(parser: argparse.ArgumentParser) -> None:
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
    add_set_option(parser, "override a key of every run's training config, e.g. --set trainer.max_epochs=5")
    parser.add_argument(
        "--out-dir",
        type=output_path,
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
        help="training jobs running at once (default: slurm all; local one per GPU group, 1 without a GPU; "
        "jobs without a GPU share the cores out)",
    )
    resources.add_argument(
        "--num-nodes",
        type=POSITIVE,
        default=1,
        metavar="N",
        help="nodes of one run's DDP (slurm only; default 1)",
    )
    resources.add_argument("--partition", type=non_empty, metavar="P", help="Slurm partition")
    resources.add_argument(
        "--slurm-option",
        dest="slurm_options",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="another sbatch option for every job, e.g. --slurm-option account=abc --slurm-option mem=64G",
    )
    resources.add_argument(
        "--wait",
        action="store_true",
        help="slurm: wait for the jobs and fail as they do (local always waits)",
    )
    add_predict_options(parser)  # of the OOF search


def sweep_command(args: argparse.Namespace) -> None:
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
        existing_file(args.pseudo, "--pseudo")
    from common_blocks.cluster.availability import check_executor

    check_executor(args.executor)  # what to install, before any config or model loads
    options = predict_options(args)  # of the OOF job
    if args.executor == "local":
        chosen_predict_options(args)  # checked before any run trains; a Slurm node checks its own
    from common_blocks.cluster.local import run_local
    from common_blocks.cluster.plan import one_sweep, plan_sweep, sweep_ensemble
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
    with one_sweep(sweep_ensemble(args.config, args.data_dir, args.out_dir)):
        plan = plan_sweep(
            args.config,
            train_overrides=args.overrides,
            data_dir=args.data_dir,
            pseudo=args.pseudo,
            out_dir=args.out_dir,
            train_only=args.train_only,
            devices=resources.devices,
            num_nodes=resources.num_nodes,
            cpu_threads=resources.cpu_threads,
        )
        check_apart(
            plan.out_dir, "the runs (--out-dir)", holds=[], within=[("the data_dir", plan.ensemble.data_dir)]
        )
        if args.executor == "slurm":
            submit_slurm(plan, resources, options, args.wait)
        else:
            run_local(plan, resources, options)
