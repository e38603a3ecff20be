#!/usr/bin/env bash
# The recipe of models/default: data, training, int8 export. About 75 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin
STDLIB=$($PY/python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
SITE=$($PY/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
$PY/code-assistant data --src "$STDLIB" --src "$SITE" --out data/default --vocab-size 8192
$PY/code-assistant train --config training/configs/default.yaml --data data/default --out runs/default
$PY/code-assistant quantize --model runs/default --out models/default
cp runs/default/run/loss_curve.png runs/default/run/summary.json models/default/
