#!/usr/bin/env bash
# Train every fold of one model family: a thin wrapper over `severstal sweep --train-only` with a
# one-member ensemble of CONFIG (local executor by default).
#
#   scripts/train_folds.sh CONFIG [sweep options...]
#   e.g. scripts/train_folds.sh configs/fpn_se_resnext50.yaml --data-dir data/severstal --out-dir runs
#
# FOLDS="0 1 2" limits the folds (default: 0 .. data.n_folds-1 of the config); the data is the
# config's data.data_dir unless --data-dir is given, the runs go to runs/ unless --out-dir is. Finished
# runs are skipped, interrupted ones continue from their last.ckpt; with several GPUs one fold runs
# per GPU at a time. The options are sweep's (--set, --pseudo, --gpus-per-job, --array-parallelism,
# or --executor slurm --partition P to submit a job array instead); job logs go to
# OUT_DIR/sweep_logs/<job id>/. Exits non-zero if any fold failed.
set -euo pipefail
config=${1:?usage: scripts/train_folds.sh CONFIG [sweep options...]}
shift
python=${PYTHON:-python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$python" - "$config" "$tmp/train_folds.yaml" "${FOLDS:-}" <<'PY'
import sys

import yaml

from common_blocks.errors import ConfigError, cli_entry
from common_blocks.training.config import load_config


@cli_entry
def main(config: str, out: str, folds: str) -> None:
    cfg = load_config(config)
    try:
        chosen = [int(fold) for fold in folds.split()] if folds.strip() else list(range(cfg.data.n_folds))
    except ValueError:
        raise ConfigError(f"FOLDS={folds!r}: expected fold numbers separated by spaces") from None
    members = [{"config": config, "folds": chosen}]
    with open(out, "w", encoding="utf-8") as file:
        yaml.safe_dump({"data_dir": str(cfg.data.data_dir), "members": members}, file)


main(*sys.argv[1:4])
PY
"$python" -c 'from common_blocks.cli import main; main()' sweep --config "$tmp/train_folds.yaml" \
  --executor local --train-only "$@"
