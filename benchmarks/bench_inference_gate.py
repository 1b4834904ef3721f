"""The classifier gate on a half defect-free synthetic test set against no gate, end to end.

Fold 0 of ``--member`` and ``--gate`` (default: the debug configs that ``make demo`` trains) from
``--runs-dir``, else untrained ones, whose numbers then time the pipeline, not a realistic gate.

    .venv/bin/python -m benchmarks.bench_inference_gate [--runs-dir runs/demo] [--member configs/debug.yaml]
        [--gate configs/debug_classifier.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import doc_parser
from benchmarks.inference_timing import (
    DEBUG_CONFIGS,
    PipelineBench,
    add_pipeline_arguments,
    in_turns,
    parse,
)


def gate_vs_no_gate(args: argparse.Namespace) -> None:
    bench = PipelineBench(args, (args.member, args.gate))
    print("\nthe gate on a half defect-free test set, end to end")
    gated = bench.predictor(gate=True)
    workers = args.workers[0]
    bench.end_to_end(gated, workers)()  # warm-up, and the count of images the gate lets through
    segmented = gated.segmented_images
    rates = in_turns(
        {"no gate": bench.end_to_end(bench.ensemble, workers), "gate": bench.end_to_end(gated, workers)},
        args.repeats,
    )
    print(
        f"   no gate: {rates['no gate']:6.2f} img/s; gate: {rates['gate']:6.2f} img/s "
        f"({rates['gate'] / rates['no gate']:.2f}x); the gate let {segmented} of {len(bench.ids)} "
        "images through"
    )


def main() -> None:
    parser = doc_parser(__doc__)
    add_pipeline_arguments(parser)
    parser.add_argument("--gate", type=Path, default=DEBUG_CONFIGS[1], help="classifier config")
    gate_vs_no_gate(parse(parser))


if __name__ == "__main__":
    main()
