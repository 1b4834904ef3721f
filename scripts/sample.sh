#!/usr/bin/env bash
# The real-data ensemble end to end (what `make sample` runs), on the real sample by default:
# folds (5, and a stratified fifth of the images set aside as the local test split) -> every run of the
# ensemble (the sweep's local executor: finished runs are skipped, interrupted ones resume) and its
# out-of-fold search -> the local test split predicted and scored -> a submission for the test images
# -> the HTML report. A second run resumes where the first stopped and retrains nothing that is done.
#
# With SAMPLE_PSEUDO_ROUNDS=N (default 0) and a weakly labelled pool in DATA_DIR (weak_images/,
# weak_labels.csv), N class-aware pseudo-label rounds follow: the last ensemble labels the weak pool
# (`severstal pseudo --image-labels`), every run trains again with those labels into RUNS_DIR/roundR,
# and the local test split is scored against the round before, with its paired interval.
#
# Usage: bash scripts/sample.sh [PYTHON] [DATA_DIR] [RUNS_DIR] [REPORT_DIR], from the repository root.
# SAMPLE_CONFIG (default configs/ensemble_sample.yaml), SAMPLE_N_FOLDS (5), SAMPLE_TEST_FRACTION (0.2)
# and SAMPLE_SET (more `--set key=value` overrides of every run, space-separated, e.g.
# "trainer.max_epochs=1") change it; tests/test_sample.py runs it tiny through them.
set -euo pipefail
python=${1:-.venv/bin/python}
data=${2:-../shared/severstal-sample}
runs=${3:-runs/sample}
report=${4:-reports/sample}
config=${SAMPLE_CONFIG:-configs/ensemble_sample.yaml}
n_folds=${SAMPLE_N_FOLDS:-5}
test_fraction=${SAMPLE_TEST_FRACTION:-0.2}
severstal="$(dirname "$python")/severstal"  # the console script `make` installs beside the venv's python
start=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

mkdir -p "$runs"
folds="$(cd "$runs" && pwd)/folds.csv"  # absolute: every run reads it whatever its data_dir
sets=(--set data.n_folds="$n_folds" --set data.test_fraction="$test_fraction" --set data.folds_file="$folds")
for override in ${SAMPLE_SET:-}; do sets+=(--set "$override"); done
ensemble=(--config "$config" --data-dir "$data" --set runs_dir="$runs")

step "folds: $n_folds, and a local test split of $test_fraction of the images ($folds)"
if [ -f "$folds" ]; then
  echo "kept $folds (delete it, and the runs, to re-split)"
else
  "$severstal" folds --data-dir "$data" --n-folds "$n_folds" --test-fraction "$test_fraction" --seed 42 --out "$folds"
fi

step "every run of $config, then its out-of-fold search"
"$severstal" sweep --config "$config" --executor local --data-dir "$data" --out-dir "$runs" "${sets[@]}" \
  | tee "$runs/local_cv.txt"

step "the local test split: predicted, scored"
"$severstal" infer "${ensemble[@]}" --local-test "$folds" --out "$runs/local_test.csv"
"$severstal" score --submission "$runs/local_test.csv" --truth "$data/train.csv" --images "$data/train_images" \
  --folds "$folds" | tee "$runs/local_test_score.txt"

previous=$runs
for round in $(seq 1 "${SAMPLE_PSEUDO_ROUNDS:-0}"); do
  step "pseudo-label round $round: the weak pool labelled class-aware by $previous, every run trained again"
  "$severstal" pseudo --config "$config" --data-dir "$data" --set runs_dir="$previous" --round "$round" \
    --images "$data/weak_images" --image-labels "$data/weak_labels.csv" --out-dir "$runs/pseudo"
  mkdir -p "$runs/round$round"
  "$severstal" sweep --config "$config" --executor local --data-dir "$data" --out-dir "$runs/round$round" \
    --pseudo "$runs/pseudo/round$round.csv" "${sets[@]}" --set pseudo.images="$(cd "$data" && pwd)/weak_images" \
    | tee "$runs/round$round/local_cv.txt"
  "$severstal" infer --config "$config" --data-dir "$data" --set runs_dir="$runs/round$round" \
    --local-test "$folds" --out "$runs/round$round/local_test.csv"
  "$severstal" score --submission "$runs/round$round/local_test.csv" --truth "$data/train.csv" \
    --images "$data/train_images" --folds "$folds" --against "$previous/local_test.csv" \
    | tee "$runs/round$round/local_test_score.txt"
  previous=$runs/round$round
done

step "submission for the test images, by the last ensemble ($previous)"
"$severstal" infer --config "$config" --data-dir "$data" --set runs_dir="$previous" --out "$runs/submission.csv"

step "report"
"$severstal" report --config "$config" --data-dir "$data" --set runs_dir="$previous" --out "$report"

step "summary"
echo "local CV (out-of-fold, tuned):"; grep -m 1 "local CV" "$runs/local_cv.txt" || true
echo "local test split:"; head -n 1 "$runs/local_test_score.txt"
for round in $(seq 1 "${SAMPLE_PSEUDO_ROUNDS:-0}"); do
  echo "after pseudo-label round $round:"; tail -n 1 "$runs/round$round/local_test_score.txt"
done
echo "submission: $runs/submission.csv"
echo "report: $report/index.html"
echo "sample finished in $(( $(date +%s) - start )) s"
