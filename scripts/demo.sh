#!/usr/bin/env bash
# The whole mission on synthetic data, end to end (what `make demo` runs):
# generate -> folds -> train debug segmenter on 2 folds (its 3 best epochs averaged) + debug gate ->
# OOF thresholds (soft and hard gates searched) and
# leaderboard row -> submission.csv -> its score against the synthetic truth -> HTML report.
#
# Usage: bash scripts/demo.sh [PYTHON] [DATA_DIR] [RUNS_DIR] [REPORT_DIR], from the repository root.
# The report goes to a folder of its own: the report command refuses one inside the runs it reads.
# DEMO_N_TRAIN, DEMO_N_TEST, DEMO_SEGMENTER_EPOCHS and DEMO_GATE_EPOCHS change the sizes (tests/test_demo.py
# runs the whole script small through them).
set -euo pipefail
python=${1:-.venv/bin/python}
data=${2:-data/synthetic}
runs=${3:-runs/demo}
report=${4:-reports/demo}
n_train=${DEMO_N_TRAIN:-160}
n_test=${DEMO_N_TEST:-60}
segmenter_epochs=${DEMO_SEGMENTER_EPOCHS:-12}
gate_epochs=${DEMO_GATE_EPOCHS:-6}
severstal="$(dirname "$python")/severstal"  # the console script `make` installs beside the venv's python
start=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

step "synthetic data in $data"
"$severstal" synthetic --out "$data" --n-train "$n_train" --n-test "$n_test" --seed 0 --overwrite
"$severstal" folds --data-dir "$data" --n-folds 4 --seed 0

step "data check: the all-empty submission scored against the synthetic test labels"
"$python" - "$data" <<'PY'
import sys
from pathlib import Path
from common_blocks.data.formats import empty_table, list_images, write_submission
data = Path(sys.argv[1])
write_submission(empty_table(list_images(data / "test_images")), data / "empty_submission.csv")
PY
"$python" validate.py score --submission "$data/empty_submission.csv" --truth "$data/test_labels.csv" \
  --images "$data/test_images"

# The debug configs train in fp32 so that the tests' numbers are the same on every CPU; the demo
# takes bf16 where the CPU has it (1.9x the debug segmenter's step on a Xeon with AMX) and writes no
# mid-epoch checkpoints (an epoch takes seconds).
fast=(--set trainer.precision=auto --set trainer.checkpoint_every_n_steps=null)
for fold in 0 1; do
  step "train debug segmenter, fold $fold"
  "$python" train.py --config configs/debug.yaml --fold "$fold" --data-dir "$data" --out-dir "$runs" \
    --overwrite --set trainer.max_epochs="$segmenter_epochs" --set augment.crop_height=null --set augment.crop_width=null \
    --set trainer.average_top_k=3 "${fast[@]}"
  step "train debug classifier gate, fold $fold"
  "$python" train.py --config configs/debug_classifier.yaml --fold "$fold" --data-dir "$data" \
    --out-dir "$runs" --overwrite --set trainer.max_epochs="$gate_epochs" "${fast[@]}"
done

step "out-of-fold ensemble: tuned post-processing, local CV, leaderboard row"
"$python" validate.py oof --config configs/ensemble_debug.yaml --data-dir "$data" \
  --set runs_dir="$runs" | tee "$runs/local_cv.txt"

step "submission"
"$python" inference.py --config configs/ensemble_debug.yaml --data-dir "$data" --set runs_dir="$runs" \
  --out "$runs/submission.csv"

step "the submission scored against the synthetic test labels"
"$python" validate.py score --submission "$runs/submission.csv" --truth "$data/test_labels.csv" \
  --images "$data/test_images" | tee "$runs/submission_score.txt"

step "report"
"$python" validate.py report --config configs/ensemble_debug.yaml --data-dir "$data" --set runs_dir="$runs" \
  --out "$report"

step "summary"
echo "local CV (out-of-fold, tuned):"; head -n 1 "$runs/local_cv.txt"
echo "submission score on the synthetic test set:"; head -n 1 "$runs/submission_score.txt"
echo "report: $report/index.html"
echo "demo finished in $(( $(date +%s) - start )) s"
