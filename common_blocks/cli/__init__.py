"""The ``severstal`` command line: one subcommand per job, each loading only what it needs.

Every command checks its arguments before anything heavy loads, reports bad input as one line
``error: ...`` with exit status 2 (130 on Ctrl-C) and never prints a traceback for it. The root
scripts ``train.py``, ``inference.py``, ``validate.py`` and ``pseudolabel.py`` call ``main`` with
their commands, so ``python train.py ...`` and ``severstal train ...`` are the same thing.

``COMMANDS`` is the registry; each command's module holds its arguments and its run function;
``options`` holds the value types and the options several commands share. The package sits above
every sub-package and no library module imports it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common_blocks.cli import bundle, data, export, infer, oof, pseudo, score, sweep, train, weights
from common_blocks.cli.options import take_default_config
from common_blocks.errors import cli_entry
from common_blocks.files import OutputError, is_write_failure


class _Parser(argparse.ArgumentParser):
    """argparse with the pipeline's contract: a usage mistake is one ``error: ...`` line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, the function adding its arguments, the function running it."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: dict[str, Command] = {
    "train": Command("train one fold of one model family", train.train_arguments, train.train_command),
    "infer": Command(
        "predict the test images with an ensemble into a submission",
        infer.infer_arguments,
        infer.infer_command,
    ),
    "oof": Command(
        "ensemble local CV on out-of-fold images; tunes post-processing, appends a leaderboard row",
        oof.oof_arguments,
        oof.oof_command,
    ),
    "score": Command(
        "score a submission against labels (either format on either side)",
        score.score_arguments,
        score.score_command,
    ),
    "checkpoint": Command(
        "score a trained checkpoint on its own validation fold",
        score.checkpoint_arguments,
        score.checkpoint_command,
    ),
    "report": Command(
        "HTML report of an ensemble's out-of-fold results", oof.report_arguments, oof.report_command
    ),
    "pseudo": Command(
        "one pseudo-label round over the test images", pseudo.pseudo_arguments, pseudo.pseudo_command
    ),
    "export": Command(
        "every network of an ensemble as ONNX, checked against PyTorch, with a manifest",
        export.export_arguments,
        export.export_command,
    ),
    "sweep": Command(
        "train every run of an ensemble as a job array (Slurm or this machine), then its OOF search",
        sweep.sweep_arguments,
        sweep.sweep_command,
    ),
    "folds": Command(
        "write folds.csv stratified on class combinations", data.folds_arguments, data.folds_command
    ),
    "synthetic": Command(
        "write a synthetic Severstal-like data set", data.synthetic_arguments, data.synthetic_command
    ),
    "dataset": Command(
        "overview of a data set: sample images per class, class distribution",
        data.dataset_arguments,
        data.dataset_command,
    ),
    "weights": Command(
        "offline pretrained weights: list what is installed, convert a file into an encoder's layout",
        weights.weights_arguments,
        weights.weights_command,
    ),
    "bundle": Command(
        "one folder to upload as a Kaggle dataset: checkpoints, config, thresholds, wheels, notebook lines",
        bundle.bundle_arguments,
        bundle.bundle_command,
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
    take_default_config(args)
    try:
        args.run(args)
    except OSError as error:  # a write the storage refused outside atomic_output, which names its file
        if not is_write_failure(error):
            raise  # anything else is a bug, with its traceback
        what = f"{error.filename}: cannot write it" if error.filename else "cannot write an output"
        raise OutputError(f"{what} ({error.strerror or error})") from None
