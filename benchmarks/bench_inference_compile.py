"""torch.compile of an inference member: compile time (the first call) and forward images/s against eager.

Same member and images as ``bench_inference_end_to_end``; the inductor cache starts empty.

    .venv/bin/python -m benchmarks.bench_inference_compile [--runs-dir runs/demo] [--member configs/debug.yaml]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from benchmarks.common import doc_parser
from benchmarks.inference_timing import PipelineBench, add_pipeline_arguments, forward_rate, in_turns, parse


def compile_vs_eager(args: argparse.Namespace) -> None:
    bench = PipelineBench(args, (args.member,))
    print("\ntorch.compile (inductor, empty compile cache) of the member, forward passes alone")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_", dir=args.work_dir)
    compiled = bench.predictor(gate=False)
    for model in compiled.segmenters:
        model.module.model = torch.compile(model.module.model, dynamic=False)
    try:
        start = time.perf_counter()
        forward_rate(compiled, bench.batches[:1])
        compile_seconds = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - report why compile is unavailable here, then go on
        print(f"   unavailable here: {type(error).__name__}: {str(error).splitlines()[0]}")
        return
    rates = in_turns(
        {"eager": bench.forward(bench.ensemble), "compiled": bench.forward(compiled)}, args.repeats
    )
    compiled_rate, eager_rate = rates["compiled"], rates["eager"]
    print(
        f"   first batch (compiles): {compile_seconds:.1f} s; then compiled {compiled_rate:6.2f} img/s "
        f"vs eager {eager_rate:6.2f} img/s ({compiled_rate / eager_rate:.2f}x)"
    )


def main() -> None:
    parser = doc_parser(__doc__)
    add_pipeline_arguments(parser)
    compile_vs_eager(parse(parser))


if __name__ == "__main__":
    main()
