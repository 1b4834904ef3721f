#!/usr/bin/env bash
# Each stage of the real-data ensemble measured against the one before it, on the local test split that
# no run trained or tuned on (run after scripts/sample.sh, which trains the runs and writes the folds):
#   one_fold    cpu_small fold 0 alone, no TTA, no gate
#   five_folds  the 5 folds averaged
#   tta         + hflip
#   gate        + the classifier gate trained on masked images only
#   gate_weak   + the gate trained on masked and weakly labelled images (data.weak): the runs
#                 classifier_lite0_weak, trained here when missing, drawing as many images per epoch
#                 as the masked-only gate (data.samples_per_epoch), so both cost the same
#   pseudo_plain        the `gate` stage with its segmenters trained again on the masked images and the
#                       weak pool pseudo-labelled by that stage's ensemble, the gate deciding which
#                       classes an image holds (the competition's way); the gate itself unchanged; as
#                       many optimiser steps as round 0 (30% of each batch pseudo-labelled)
#   pseudo_class_aware  the same with the weak pool's image labels deciding (`--image-labels`; a class
#                       the ensemble is unsure of is left out of the loss)
#   pseudo_class_aware_drop  the same, an image with a class the ensemble is unsure of left out
#                       (`--unsure drop`)
# The pseudo stages are each measured against `gate`; their runs go to RUNS_DIR/stages/STAGE/runs.
# Each stage tunes its own post-processing out of fold (its thresholds in RUNS_DIR/stages/STAGE/),
# predicts the local test split and is scored against the stage before, with the 90% paired-bootstrap
# interval of the difference. The table goes to RUNS_DIR/stages/stages.md. The runs are those of
# RUNS_DIR/round0, the folds RUNS_DIR/folds.csv, as scripts/sample.sh lays them out.
#
# Usage: bash scripts/sample_stages.sh [PYTHON] [DATA_DIR] [RUNS_DIR]; SAMPLE_PARALLELISM=K trains the
# pseudo stages' runs K at a time (default 1), as scripts/sample.sh does.
set -euo pipefail
python=${1:-.venv/bin/python}
data=${2:-../shared/severstal-sample}
runs=${3:-runs/sample}
config=${SAMPLE_CONFIG:-configs/ensemble_sample.yaml}
severstal="$(dirname "$python")/severstal"
runs=$(cd "$runs" && pwd)
folds="$runs/folds.csv"
round0="$runs/round0"
member="configs/cpu_small.yaml"
all_folds="[0, 1, 2, 3, 4]"

declare -A sets=(
  [one_fold]="members=[{config: $member, folds: [0]}]|gate=null|tta=[none]"
  [five_folds]="gate=null|tta=[none]"
  [tta]="gate=null"
  [gate]=""
  [gate_weak]="gate={config: classifier_lite0_weak, folds: $all_folds}"
  [pseudo_plain]=""
  [pseudo_class_aware]=""
  [pseudo_class_aware_drop]=""
)
stages=(one_fold five_folds tta gate gate_weak pseudo_plain pseudo_class_aware pseudo_class_aware_drop)
declare -A against_stage=([pseudo_plain]=gate [pseudo_class_aware]=gate [pseudo_class_aware_drop]=gate)  # default: the stage before
wanted=" ${SAMPLE_STAGES:-${stages[*]}} "

train_weak_gate() {
  for fold in 0 1 2 3 4; do
    [ -f "$round0/classifier_lite0_weak/fold$fold/summary.json" ] && continue
    printf '\n== the gate with the weak pool, fold %s\n' "$fold"
    resume=()
    [ -f "$round0/classifier_lite0_weak/fold$fold/last.ckpt" ] && resume=(--resume)
    masked=$(awk -F, -v fold="$fold" 'NR > 1 && $2 != fold && $2 != "test"' "$folds" | wc -l)
    "$severstal" train --config configs/classifier_lite0.yaml --fold "$fold" --data-dir "$data" --out-dir "$round0" \
      --set name=classifier_lite0_weak --set 'data.weak={}' --set data.samples_per_epoch="$masked" \
      --set data.n_folds=5 --set data.test_fraction=0.2 --set data.folds_file="$folds" "${resume[@]}"
  done
}

# The weak pool pseudo-labelled by the `gate` stage's ensemble ($2: more `severstal pseudo` options), and
# the segmenters trained again with it into RUNS_DIR/stages/$1/runs, beside a link to round 0's gate.
train_pseudo_stage() {
  local dir="$runs/stages/$1"
  shift
  mkdir -p "$dir/runs"
  if [ ! -f "$dir/pseudo/round1.csv" ]; then
    printf '\n== %s: the weak pool pseudo-labelled\n' "$(basename "$dir")"
    "$severstal" pseudo --config "$config" --data-dir "$data" --set runs_dir="$round0" \
      --set postprocess.thresholds_file="$runs/stages/gate/thresholds.json" --round 1 \
      --images "$data/weak_images" "$@" --out-dir "$dir/pseudo"
  fi
  # At round 0's cost: a batch is 30% pseudo-labelled (pseudo.fraction), so 70% of fold 0's masked
  # training images per epoch keeps round 0's number of optimiser steps.
  local masked
  masked=$(awk -F, 'NR > 1 && $2 != 0 && $2 != "test"' "$folds" | wc -l)
  # the ensemble's segmenters alone: the gate stays round 0's
  "$python" -c 'import sys, yaml; tree = yaml.safe_load(open(sys.argv[1])); tree["gate"] = None
yaml.safe_dump(tree, open(sys.argv[2], "w"))' "$config" "$dir/segmenters.yaml"
  "$severstal" sweep --config "$dir/segmenters.yaml" --executor local --array-parallelism "${SAMPLE_PARALLELISM:-1}" \
    --data-dir "$data" --out-dir "$dir/runs" \
    --train-only --pseudo "$dir/pseudo/round1.csv" --set pseudo.images="$data/weak_images" \
    --set data.samples_per_epoch=$((masked * 7 / 10)) \
    --set data.n_folds=5 --set data.test_fraction=0.2 --set data.folds_file="$folds"
  ln -sfn "$round0/classifier_lite0" "$dir/runs/classifier_lite0"
}

# A stage already measured (its local_test.json written) is kept; SAMPLE_STAGES names the stages to
# measure now (default all), each against the stage before it in the list above.
table="$runs/stages/stages.md"
mkdir -p "$runs/stages"
previous=""
for stage in "${stages[@]}"; do
  out="$runs/stages/$stage"
  if [ ! -f "$out/local_test.json" ] && [[ $wanted == *" $stage "* ]]; then
    stage_runs="$round0"
    case $stage in
      gate_weak) train_weak_gate ;;
      pseudo_plain) train_pseudo_stage "$stage" ;;
      pseudo_class_aware) train_pseudo_stage "$stage" --image-labels "$data/weak_labels.csv" ;;
      pseudo_class_aware_drop) train_pseudo_stage "$stage" --image-labels "$data/weak_labels.csv" --unsure drop ;;
    esac
    [[ $stage == pseudo_* ]] && stage_runs="$out/runs"
    mkdir -p "$out"
    overrides=(--set runs_dir="$stage_runs" --set postprocess.thresholds_file="$out/thresholds.json" --set leaderboard="$out/leaderboard.csv")
    IFS='|' read -ra extra <<< "${sets[$stage]}"
    for item in "${extra[@]}"; do [ -n "$item" ] && overrides+=(--set "$item"); done
    printf '\n== %s\n' "$stage"
    "$severstal" oof --config "$config" --data-dir "$data" "${overrides[@]}" --json > "$out/oof.json"
    "$severstal" infer --config "$config" --data-dir "$data" "${overrides[@]}" --local-test "$folds" \
      --out "$out/local_test.csv"
    base=${against_stage[$stage]:-$previous}
    against=()
    [ -n "$base" ] && against=(--against "$runs/stages/$base/local_test.csv")
    "$severstal" score --submission "$out/local_test.csv" --truth "$data/train.csv" --images "$data/train_images" \
      --folds "$folds" "${against[@]}" --json > "$out/local_test.json.partial"
    mv "$out/local_test.json.partial" "$out/local_test.json"
  fi
  previous=$stage
done

rows=()
previous=""
for stage in "${stages[@]}"; do
  out="$runs/stages/$stage"
  base=${against_stage[$stage]:-$previous}
  previous=$stage
  [ -f "$out/local_test.json" ] || continue
  rows+=("$(jq -r --arg stage "$stage" --arg base "$base" --slurpfile oof "$out/oof.json" '
    def r: . * 10000 | round / 10000;
    [$stage, ($oof[0].score | r | tostring), ($oof[0].n_images | tostring), (.score | r | tostring),
     (.per_class | [.[] | r | tostring] | join(" / ")), (.positive_dice | r | tostring),
     (.false_positive_pairs | tostring),
     (if .against then "\($base): \(.against.difference | r) [\(.against.low | r), \(.against.high | r)]" else "" end)]
    | "| " + join(" | ") + " |"' "$out/local_test.json")")
done
{
  echo "| stage | OOF CV (tuned) | OOF images | local test | per class 1 / 2 / 3 / 4 | positive-pair dice | false-positive pairs | against: difference [90% interval] |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} > "$table"
cat "$table"
