#!/usr/bin/env bash
# Pseudo-labelling rounds: train -> pseudo-label the test images -> retrain with them -> again.
#
#   scripts/pseudo_rounds.sh ENSEMBLE_CONFIG DATA_DIR
#   e.g. ROUNDS=2 scripts/pseudo_rounds.sh configs/ensemble.yaml data/severstal
#        SWEEP_ARGS="--executor slurm --partition gpu" scripts/pseudo_rounds.sh configs/ensemble.yaml data/severstal
#
# Every round is one `severstal sweep` of the ensemble: it trains every run of its members and its
# classifier gate (over the ensemble's folds) into RUNS/roundR, then tunes the round's post-processing
# on out-of-fold images (RUNS/roundR/NAME/thresholds.json, a leaderboard row). Round 0 trains on the
# real images only; round R's labels are PSEUDO_DIR/roundR.csv, made by the round R-1 ensemble (see
# pseudolabel.py), and retraining mixes them in as `pseudo.fraction` (default 0.3) of every training
# batch, never for validation. A round interrupted or failed is continued by running the script again
# (finished runs are skipped, the others resume from last.ckpt).
#
# Environment: ROUNDS (default 2), RUNS (default runs/pseudo), PSEUDO_DIR (default pseudo), P_HIGH /
# P_LOW (default 0.95 / 0.05), PYTHON (default python), SWEEP_ARGS (more sweep options for every round,
# e.g. "--set trainer.max_epochs=20 --gpus-per-job 2", or "--executor slurm --partition gpu": each
# round then waits for its jobs; the default executor is local), TRAIN_ARGS (appended to SWEEP_ARGS, as
# before: its --set options work as they did), SKIP_OOF=1 (train only, no tuning: pseudo-labelling
# then uses the ensemble's default post-processing). Extra arguments after DATA_DIR (the training
# configs, which older versions took) are ignored: the ensemble names them.
set -euo pipefail
usage="usage: scripts/pseudo_rounds.sh ENSEMBLE_CONFIG DATA_DIR"
ensemble=${1:?$usage}
data=${2:?$usage}
shift 2
[ $# -eq 0 ] || echo "note: the ensemble's members and gate are trained; ignoring $*" >&2
python=${PYTHON:-python}
rounds=${ROUNDS:-2}
runs=${RUNS:-runs/pseudo}
pseudo_dir=${PSEUDO_DIR:-pseudo}
p_high=${P_HIGH:-0.95}
p_low=${P_LOW:-0.05}
read -r -a sweep_args <<< "${SWEEP_ARGS:-} ${TRAIN_ARGS:-}"
[ "${SKIP_OOF:-0}" = 1 ] && sweep_args+=(--train-only)

severstal() { "$python" -c 'from common_blocks.cli import main; main()' "$@"; }

# Train and tune round R's ensemble into RUNS/roundR, with the given extra sweep options.
sweep() {
  local round=$1
  shift
  echo "== round $round: training the ensemble's runs into $runs/round$round, then its OOF search"
  severstal sweep --config "$ensemble" --executor local --data-dir "$data" --out-dir "$runs/round$round" \
    --wait ${sweep_args[@]+"${sweep_args[@]}"} "$@"
}

sweep 0  # round 0: real images only
for round in $(seq 1 "$rounds"); do
  previous=$((round - 1))
  echo "== round $round: pseudo-labelling the test images with the round-$previous ensemble"
  "$python" pseudolabel.py --config "$ensemble" --round "$round" --data-dir "$data" --out-dir "$pseudo_dir" \
    --p-high "$p_high" --p-low "$p_low" --set "runs_dir=$runs/round$previous"
  sweep "$round" --pseudo "$pseudo_dir/round$round.csv"
done
echo "== done: models of the last round in $runs/round$rounds, labels in $pseudo_dir/round1..$rounds.csv"
