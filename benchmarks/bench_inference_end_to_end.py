"""Inference end to end (JPEG decode -> the member with TTA -> post-processing -> RLE -> CSV) against the
member's networks alone on preloaded tensors (logits at the network's resolution, one pass per flip):
same model, same images, same run. Target >= 0.85.

Fold 0 of ``--member`` (default: the debug segmenter that ``make demo`` trains) from ``--runs-dir``,
else an untrained one written to the work folder (``inference_timing``). The non-forward work per
image is about fixed, so the ratio depends on how heavy the member is: the tiny debug member is the
hardest case.

    .venv/bin/python -m benchmarks.bench_inference_end_to_end [--runs-dir runs/demo]
        [--member configs/debug.yaml] [--images 48] [--batch-size 4] [--workers 0 1]
        [--tta none hflip vflip] [--average probabilities|logits] [--threads N]
"""

from __future__ import annotations

import argparse

from benchmarks.common import doc_parser
from benchmarks.inference_timing import PipelineBench, add_pipeline_arguments, in_turns, parse

TARGET_RATIO = 0.85


def end_to_end_vs_forward(args: argparse.Namespace) -> None:
    bench = PipelineBench(args, (args.member,))
    print(
        f"\nend to end vs forward passes alone ({len(bench.ids)} images, batch {args.batch_size}, "
        f"TTA {'+'.join(args.tta)}, average {args.average})"
    )
    rates = in_turns(
        {"forward": bench.forward(bench.ensemble)}
        | {f"{w} worker(s)": bench.end_to_end(bench.ensemble, w) for w in args.workers},
        args.repeats,
    )
    forward = rates.pop("forward")
    print(f"   forward passes alone: {forward:6.2f} img/s")
    for name, rate in rates.items():
        verdict = "meets" if rate / forward >= TARGET_RATIO else "is below"
        print(
            f"   end to end, {name}: {rate:6.2f} img/s = {rate / forward:.2f} of forward "
            f"({verdict} {TARGET_RATIO})"
        )


def main() -> None:
    parser = doc_parser(__doc__)
    add_pipeline_arguments(parser)
    end_to_end_vs_forward(parse(parser))


if __name__ == "__main__":
    main()
