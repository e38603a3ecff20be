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
# Issue 16: three unseen projects (toolz added), without and with the project as the workspace,
# the loop rate of 64-token multi-line completions, and the cache-mix grid on the tuning lines.
PROJECTS="--line-completion $HELD/tinydb --line-completion $HELD/cachetools --line-completion $HELD/toolz"
$CA eval --model models/default --src $HELD/tinydb --src $HELD/cachetools --src $HELD/toolz --quantize int8 \
   $PROJECTS --lines-per-file 20 > "$OUT/line_completion.json"
$CA eval --model models/default --src $HELD/tinydb --max-windows 1 --quantize int8 \
   $PROJECTS --lines-per-file 20 --tuning-lines-per-file 10 --tune-mix > "$OUT/tune_mix.json"
.venv/bin/python -m benchmarks.workspace_bench --report "$OUT/line_completion.json" \
   --before docs/bench/workspace_before.json --out docs/bench
