#!/usr/bin/env bash
# Every number in models/default/MODEL_CARD.md. Needs data/default and runs/default from
# scripts/train-default-model.sh (the fp32 weights); results go to models/default/eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
CA=.venv/bin/code-assistant
OUT=models/default/eval
HELD=tests/data/heldout
mkdir -p "$OUT"
$CA eval --model runs/default --data data/default > "$OUT/val_fp32.json"
$CA eval --model models/default --data data/default > "$OUT/val_int8.json"
$CA eval --model runs/default --src $HELD --quantize none \
   --line-completion $HELD/tinydb --line-completion $HELD/cachetools --lines-per-file 20 > "$OUT/heldout_fp32.json"
$CA eval --model models/default --src $HELD --quantize int8 \
   --line-completion $HELD/tinydb --line-completion $HELD/cachetools --lines-per-file 20 > "$OUT/heldout_int8.json"
