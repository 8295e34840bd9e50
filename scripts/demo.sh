#!/usr/bin/env bash
# `make demo`: the main job end to end on the default model (CPU friendly sizes).
set -euo pipefail
OUT=${1:-demo_out}
PY=${PY:-.venv/bin/python}
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
mkdir -p "$OUT"
echo "== prepare-data (300 real ShareGPT conversations, 95/5 split)"
$PY scripts/prepare_data.py --dataset sharegpt --output-path "$OUT/dataset" --sample-size 300 --split-eval
