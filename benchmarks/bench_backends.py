"""Backends x precisions: the ``cpu_small`` member and FPN + se_resnext50_32x4d (both random init unless
``--runs-dir`` holds a trained ``cpu_small``, exported once by ``export_ensemble``) at 256x1600, each
installed backend (torch channels-last, OpenVINO, ONNX Runtime) in fp32 and, where the CPU has bf16
instructions, bf16: img/s of the network alone (preloaded batches, logits at its resolution) and end
to end on the first ``--images`` real images of ``../shared/severstal-sample/train_images`` (that
column is skipped when the sample is absent; the networks then run on synthetic images), no TTA, no
gate. Targets: fastest fp32 >= 1.5x torch fp32 and bf16 >= 2.5x torch fp32 on FPN, network alone;
end to end >= 0.9 of the network alone for the backend ``--backend auto`` picks.

    .venv/bin/python -m benchmarks.bench_backends --images 16 --batch-size 2 --repeats 1 [--threads 1]
        [--backend-members cpu_small fpn_se_resnext50]

A trained ``cpu_small`` (fold 0 in ``--runs-dir``) is post-processed at threshold 0.5, minimum area
500 px: then the post-processing times are those of real maps.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import doc_parser
from benchmarks.inference_timing import (
    add_backend_members,
    add_common_arguments,
    backend_images,
    backend_predictors,
    cpu_description,
    end_to_end_rate,
    forward_rate,
    in_turns,
    parse,
    preload,
)

FP32_TARGET, BF16_TARGET = 1.5, 2.5


def backends_and_precisions(args: argparse.Namespace) -> None:
    images_dir, ids, real = backend_images(args)
    print(
        f"\nbackends x precisions at 256x1600 ({len(ids)} {'real' if real else 'synthetic'} images, batch "
        f"{args.batch_size}, no TTA, {torch.get_num_threads()} thread(s); {cpu_description()})"
    )
    for name in args.backend_members:
        predictors = backend_predictors(args, name, images_dir)
        batches = preload(images_dir, ids, args.batch_size, next(iter(predictors.values())).grayscale)
        measures = {}
        for key, ensemble in predictors.items():
            forward_rate(ensemble, batches[:1])  # warm-up: first calls of every kernel
            measures[(*key, "network")] = lambda e=ensemble, b=batches: forward_rate(e, b)
            if real:
                measures[(*key, "end to end")] = lambda e=ensemble: end_to_end_rate(
                    e, images_dir, ids, args.batch_size, 0, args.work_dir / "bench_submission.csv"
                )
        rates = in_turns(measures, args.repeats)
        print(f"   {name}: backend, precision: network alone / end to end img/s (end to end / network)")
        for backend, precision in predictors:
            network = rates[(backend, precision, "network")]
            whole = rates.get((backend, precision, "end to end"))
            tail = (
                f" / {whole:6.2f} ({whole / network:.2f})" if whole is not None else " / - (no real images)"
            )
            print(f"     {backend:12s} {precision}: {network:6.2f}{tail}")
        torch_fp32 = rates[("torch", "fp32", "network")]
        for precision, target in (("fp32", FP32_TARGET), ("bf16", BF16_TARGET)):
            candidates = {b: r for (b, p, part), r in rates.items() if p == precision and part == "network"}
            if candidates:
                best = max(candidates, key=candidates.get)
                ratio = candidates[best] / torch_fp32
                verdict = "meets" if ratio >= target else "is below"
                print(f"     fastest {precision}: {best} {ratio:.2f}x torch fp32 ({verdict} {target}x)")


def main() -> None:
    parser = doc_parser(__doc__)
    add_common_arguments(parser)
    add_backend_members(parser)
    backends_and_precisions(parse(parser))


if __name__ == "__main__":
    main()
