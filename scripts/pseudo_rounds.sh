#!/usr/bin/env bash
# Pseudo-labelling rounds: train -> pseudo-label the test images -> retrain with them -> again.
#
#   scripts/pseudo_rounds.sh ENSEMBLE_CONFIG DATA_DIR TRAIN_CONFIG [TRAIN_CONFIG ...]
#   e.g. FOLDS="0 1 2 3 4" scripts/pseudo_rounds.sh configs/ensemble.yaml data/severstal \
#          configs/fpn_se_resnext50.yaml configs/unet_se_resnext50.yaml configs/classifier_resnet34.yaml
#
# The TRAIN_CONFIGs are the ensemble's members and its classifier gate: every round retrains all of
# them, since the ensemble of round R+1 is made of the round-R retrained models.
# Round R's models live in RUNS/roundR (round 0: without pseudo-labels); the ensemble config is
# pointed there with `--set runs_dir=...`, so no round overwrites another. Round R's labels are
# PSEUDO_DIR/roundR.csv, made by the round R-1 ensemble (see pseudolabel.py), and retraining uses
# them as `pseudo.fraction` (default 0.3) of every training batch, never for validation.
#
# Environment: FOLDS (default: every fold of each config), ROUNDS (default 2), RUNS (default runs/pseudo),
# PSEUDO_DIR (default pseudo), P_HIGH / P_LOW (default 0.95 / 0.05), PYTHON (default python),
# TRAIN_ARGS (more train.py options for every run, e.g. "--devices 2 --set trainer.max_epochs=20").
# If `validate.py oof` is available it tunes each round's post-processing on out-of-fold images
# before pseudo-labelling (and writes the round's local CV to the leaderboard); it is skipped with
# SKIP_OOF=1.
set -euo pipefail
usage="usage: scripts/pseudo_rounds.sh ENSEMBLE_CONFIG DATA_DIR TRAIN_CONFIG [TRAIN_CONFIG ...]"
ensemble=${1:?$usage}
data=${2:?$usage}
shift 2
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
python=${PYTHON:-python}
rounds=${ROUNDS:-2}
runs=${RUNS:-runs/pseudo}
pseudo_dir=${PSEUDO_DIR:-pseudo}
p_high=${P_HIGH:-0.95}
p_low=${P_LOW:-0.05}
read -r -a train_args <<< "${TRAIN_ARGS:-}"

# Train every config's folds into RUNS/roundR, with the given extra train.py options.
train_all() {
  local round=$1
  shift
  for config in "${train_configs[@]}"; do
    echo "== round $round: training $config"
    PYTHON="$python" scripts/train_folds.sh "$config" --data-dir "$data" --out-dir "$runs/round$round" \
      ${train_args[@]+"${train_args[@]}"} "$@"
  done
}

# Tune the post-processing of round R's ensemble on its out-of-fold images (its thresholds file).
tune() {
  local round=$1
  [ "${SKIP_OOF:-0}" = 1 ] && return 0
  echo "== round $round: local CV and tuned post-processing"
  "$python" validate.py oof --config "$ensemble" --data-dir "$data" --set "runs_dir=$runs/round$round" \
    --set "postprocess.thresholds_file=$runs/round$round/thresholds.json"
}

train_configs=("$@")
train_all 0  # round 0: real images only
for round in $(seq 1 "$rounds"); do
  previous=$((round - 1))
  tune "$previous"
  echo "== round $round: pseudo-labelling the test images with the round-$previous ensemble"
  "$python" pseudolabel.py --config "$ensemble" --round "$round" --data-dir "$data" --out-dir "$pseudo_dir" \
    --p-high "$p_high" --p-low "$p_low" --set "runs_dir=$runs/round$previous" \
    --set "postprocess.thresholds_file=$runs/round$previous/thresholds.json"
  train_all "$round" --pseudo "$pseudo_dir/round$round.csv"
done
tune "$rounds"
echo "== done: models of the last round in $runs/round$rounds, labels in $pseudo_dir/round1..$rounds.csv"
