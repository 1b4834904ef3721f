#!/usr/bin/env bash
# Train every fold of one model family.
#
#   scripts/train_folds.sh CONFIG [train.py options...]
#   e.g. scripts/train_folds.sh configs/fpn_se_resnext50.yaml --data-dir data/severstal --out-dir runs
#
# With several GPUs visible, folds run in parallel, one per GPU (CUDA_VISIBLE_DEVICES); otherwise
# one after another. FOLDS="0 1 2" limits the folds (default: 0 .. data.n_folds-1 of the config).
# Each fold's log is runs_logs/NAME_foldK.log; the script exits non-zero if any fold failed.
set -euo pipefail
config=${1:?usage: scripts/train_folds.sh CONFIG [train.py options...]}
shift
python=${PYTHON:-python}
name=$(basename "$config" .yaml)
n_folds=$("$python" -c "from common_blocks.training.config import load_config; print(load_config('$config').data.n_folds)")
folds=${FOLDS:-$(seq -s ' ' 0 $((n_folds - 1)))}
n_gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
mkdir -p runs_logs

failed=0
if [ "$n_gpus" -gt 1 ]; then
  slot=0
  pids=()
  for fold in $folds; do
    echo "fold $fold on GPU $slot -> runs_logs/${name}_fold${fold}.log"
    CUDA_VISIBLE_DEVICES=$slot "$python" train.py --config "$config" --fold "$fold" "$@" \
      > "runs_logs/${name}_fold${fold}.log" 2>&1 &
    pids+=($!)
    slot=$((slot + 1))
    if [ "$slot" -eq "$n_gpus" ]; then  # every GPU busy: wait for this wave
      for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
      pids=()
      slot=0
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
else
  for fold in $folds; do
    echo "fold $fold -> runs_logs/${name}_fold${fold}.log"
    "$python" train.py --config "$config" --fold "$fold" "$@" 2>&1 | tee "runs_logs/${name}_fold${fold}.log" \
      || failed=1
  done
fi
exit $failed
