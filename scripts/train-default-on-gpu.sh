#!/usr/bin/env bash
# The default model on one GPU in about ten minutes: data from this Python's sources, a Llama-shaped
# model trained for the measured throughput, the Hugging Face directory and its int8 copy, the
# held-out evaluation, and OUT/summary.json. No network, nothing installed: the machine's own Python
# (torch, lightning, transformers, tokenizers, tiktoken, safetensors, yaml, tqdm, matplotlib, pathspec)
# with this project on PYTHONPATH. OUT holds at most 8 files of at most 16 MiB.
#
#   scripts/train-default-on-gpu.sh OUT [--src DIR ...] [--minutes 9] [--smoke]
#   for v in OUT/models-*.tar; do tar xf "$v" -C OUT; done   # OUT/model (bf16), OUT/model-int8
#
# $PYTHON picks the interpreter (default: python3). See docs/fine-tuning.md, "The default model on one GPU".
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: $0 OUT [--src DIR ...] [--minutes M] [--smoke]" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1

"${PYTHON:-python3}" -m training.gpu_recipe "$@" 2>&1 | tee "$OUT/train.log"
