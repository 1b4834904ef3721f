#!/usr/bin/env bash
# The real-data ensemble end to end (what `make sample` runs), on the real sample by default:
# folds (5, and a stratified fifth of the images set aside as the local test split) -> every run of the
# ensemble (the sweep's local executor: finished runs are skipped, interrupted ones resume) and its
# out-of-fold search -> the local test split predicted and scored -> a submission for the test images
# -> the HTML report. A second run resumes where the first stopped and retrains nothing that is done.
#
# With SAMPLE_PSEUDO_ROUNDS=N (default 0) and a weakly labelled pool in DATA_DIR (weak_images/,
# weak_labels.csv), N class-aware pseudo-label rounds follow: the last ensemble labels the weak pool
# (`severstal pseudo --image-labels`, into RUNS_DIR/pseudo), every run trains again with those labels
# into RUNS_DIR/roundR, and the local test split is scored against the round before, with its paired
# interval. The submission and the report are the last round's.
#
# Layout: RUNS_DIR/folds.csv, RUNS_DIR/round0/ (the runs, thresholds, local_cv.txt, local_test.csv,
# local_test_score.txt), RUNS_DIR/roundR/ for each pseudo-label round, RUNS_DIR/submission.csv.
#
# Usage: bash scripts/sample.sh [PYTHON] [DATA_DIR] [RUNS_DIR] [REPORT_DIR], from the repository root.
# SAMPLE_CONFIG (default configs/ensemble_sample.yaml), SAMPLE_N_FOLDS (5), SAMPLE_TEST_FRACTION (0.2),
# SAMPLE_PARALLELISM (runs trained at once; default 2 on a machine without a GPU and with 2 cores or
# more, each with half the cores: 1.07-1.34x the images/s of one run with all of them on 2 cores, see
# docs/results/training-speed.md; else 1) and SAMPLE_SET (more `--set key=value` overrides of every
# run, space-separated, e.g. "trainer.max_epochs=1") change it; tests/test_sample.py runs it tiny
# through them.
set -euo pipefail
python=${1:-.venv/bin/python}
data=${2:-../shared/severstal-sample}
runs=${3:-runs/sample}
report=${4:-reports/sample}
config=${SAMPLE_CONFIG:-configs/ensemble_sample.yaml}
n_folds=${SAMPLE_N_FOLDS:-5}
test_fraction=${SAMPLE_TEST_FRACTION:-0.2}
rounds=${SAMPLE_PSEUDO_ROUNDS:-0}
severstal="$(dirname "$python")/severstal"  # the console script `make` installs beside the venv's python
start=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

mkdir -p "$runs"
runs=$(cd "$runs" && pwd)  # absolute: the runs read the folds file whatever their data_dir
data=$(cd "$data" && pwd)
folds="$runs/folds.csv"
sets=(--set data.n_folds="$n_folds" --set data.test_fraction="$test_fraction" --set data.folds_file="$folds")
for override in ${SAMPLE_SET:-}; do sets+=(--set "$override"); done
parallelism=${SAMPLE_PARALLELISM:-$("$python" -c 'import os, torch
print(1 if torch.cuda.is_available() else min(2, len(os.sched_getaffinity(0))))')}

# Every run of round $1 (into RUNS_DIR/round$1; more sweep options after it), its OOF search, and its
# score on the local test split.
train_and_score() {
  local round_dir="$runs/round$1"
  shift
  mkdir -p "$round_dir"
  "$severstal" sweep --config "$config" --executor local --array-parallelism "$parallelism" --data-dir "$data" \
    --out-dir "$round_dir" "${sets[@]}" "$@" | tee "$round_dir/local_cv.txt"
  "$severstal" infer --config "$config" --data-dir "$data" --set runs_dir="$round_dir" --local-test "$folds" \
    --out "$round_dir/local_test.csv"
}

step "folds: $n_folds, and a local test split of $test_fraction of the images ($folds)"
if [ -f "$folds" ]; then
  echo "kept $folds (delete it, and the runs, to re-split)"
else
  "$severstal" folds --data-dir "$data" --n-folds "$n_folds" --test-fraction "$test_fraction" --seed 42 --out "$folds"
fi

step "every run of $config, its out-of-fold search, the local test split predicted and scored"
train_and_score 0
"$severstal" score --submission "$runs/round0/local_test.csv" --truth "$data/train.csv" --images "$data/train_images" \
  --folds "$folds" | tee "$runs/round0/local_test_score.txt"

for round in $(seq 1 "$rounds"); do
  previous="$runs/round$((round - 1))"
  step "pseudo-label round $round: the weak pool labelled class-aware by round $((round - 1)), every run trained again"
  "$severstal" pseudo --config "$config" --data-dir "$data" --set runs_dir="$previous" --round "$round" \
    --images "$data/weak_images" --image-labels "$data/weak_labels.csv" --out-dir "$runs/pseudo"
  train_and_score "$round" --pseudo "$runs/pseudo/round$round.csv" --set pseudo.images="$data/weak_images"
  "$severstal" score --submission "$runs/round$round/local_test.csv" --truth "$data/train.csv" \
    --images "$data/train_images" --folds "$folds" --against "$previous/local_test.csv" \
    | tee "$runs/round$round/local_test_score.txt"
done

last="$runs/round$rounds"
step "submission for the test images, by round $rounds's ensemble"
"$severstal" infer --config "$config" --data-dir "$data" --set runs_dir="$last" --out "$runs/submission.csv"

step "report"
"$severstal" report --config "$config" --data-dir "$data" --set runs_dir="$last" --out "$report"

step "summary"
for round in $(seq 0 "$rounds"); do
  echo "round $round: $(grep -m 1 "local CV" "$runs/round$round/local_cv.txt"); local test split: $(head -n 1 "$runs/round$round/local_test_score.txt")"
  [ "$round" -gt 0 ] && tail -n 1 "$runs/round$round/local_test_score.txt"
done
echo "submission: $runs/submission.csv"
echo "report: $report/index.html"
echo "sample finished in $(( $(date +%s) - start )) s"
