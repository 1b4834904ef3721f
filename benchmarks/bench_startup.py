"""Start-up cost of each command: what importing the modules it runs takes, from ``python -X importtime``.

    python -m benchmarks.bench_startup [--repeats 3]

For each command, a fresh interpreter imports the command line and the modules the command uses;
the figure is the sum of the top-level imports' cumulative times (median of the repeats), and the
heavy libraries it loaded are listed.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from benchmarks.common import doc_parser

COMMAND_MODULES = {
    "score": ["common_blocks.evaluation.scorer"],
    "folds": ["common_blocks.data.folds", "common_blocks.data.formats"],
    "synthetic": ["common_blocks.data.synthetic"],
    "evaluation (package)": [
        "common_blocks.evaluation.metric",
        "common_blocks.evaluation.scorer",
        "common_blocks.evaluation.postprocess",
        "common_blocks.evaluation.oof_stats",
        "common_blocks.evaluation.threshold_search",
    ],
    "dataset": ["common_blocks.reports.dataset_overview"],
    "train": ["common_blocks.training.runner"],
    "infer": ["common_blocks.inference.predictor", "common_blocks.inference.submission"],
    "oof": ["common_blocks.inference.oof_search"],
    "report": ["common_blocks.reports.oof_report"],
}
HEAVY = ("torch", "lightning", "segmentation_models_pytorch", "timm", "matplotlib")


def import_seconds(modules: list[str]) -> tuple[float, list[str]]:
    """Seconds of the top-level imports of ``common_blocks.cli`` and ``modules``, and the heavy ones loaded."""
    code = (
        f"import json, sys, common_blocks.cli, {', '.join(modules)}; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    total = 0
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if len(name) - len(name.lstrip()) == 1:  # one space: imported by the command itself
            total += int(cumulative)
    return total / 1e6, json.loads(result.stdout)


def main() -> None:
    parser = doc_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for command, modules in COMMAND_MODULES.items():
        runs = [import_seconds(modules) for _ in range(args.repeats)]
        seconds = statistics.median(run[0] for run in runs)
        print(
            f"{command:22s} {seconds:5.2f} s   loads: {', '.join(runs[0][1]) or 'none of ' + '/'.join(HEAVY)}"
        )


if __name__ == "__main__":
    main()
