#!/usr/bin/env bash
# `make demo`: the whole pipeline end to end on the default model, sized for a 2-core CPU (~12 min).
#   prepare-data -> build-cache (+ --view-train-data) -> train -> bench -> export + validate
#   -> the shipped draft (drafts/smollm2-135m-instruct-eagle3), alone and with prompt lookup in front of it,
#      against vanilla and prompt lookup
# Override sizes with env vars, e.g. `SAMPLES=2000 STEPS=400 make demo`.
set -euo pipefail
OUT=${1:-demo_out}
PY=${PY:-.venv/bin/python}
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
SAMPLES=${SAMPLES:-300}
STEPS=${STEPS:-60}
MAXLEN=${MAXLEN:-256}
SHIPPED=${SHIPPED:-smollm2-135m-instruct-eagle3}
SHIPPED_CONFIG=${SHIPPED_CONFIG:-1,7,1,8}
MIN_DRAFT_PROB=${MIN_DRAFT_PROB:-0.25}
BENCH_Q=${BENCH_Q:-4}
BENCH_TOKENS=${BENCH_TOKENS:-96}
mkdir -p "$OUT"

echo "== 1/6 prepare-data: $SAMPLES real ShareGPT conversations (offline), 95/5 split"
$PY scripts/prepare_data.py --dataset sharegpt --output-path "$OUT/dataset" --sample-size "$SAMPLES" --split-eval

echo "== 2/6 build-cache: tokens, loss masks, draft vocab; show two samples (green = trained on)"
$PY scripts/build_eagle3_dataset_cache.py \
    --target-model-path $MODEL \
    --draft-model-config configs/smollm2-135m-eagle3.json \
    --train-data-path "$OUT/dataset/sharegpt_train.jsonl" \
    --eval-data-path "$OUT/dataset/sharegpt_test.jsonl" \
    --cache-dir "$OUT/cache" --chat-template smollm2 --max-length "$MAXLEN" \
    --view-train-data 1 2

echo "== 3/6 train: $STEPS online steps (target in the loop)"
rm -rf "$OUT/outputs"  # a fresh run each time (use --resume to continue one)
$PY scripts/train_eagle3_online.py \
    --target-model-path $MODEL \
    --draft-model-config configs/smollm2-135m-eagle3.json \
    --train-data-path "$OUT/dataset/sharegpt_train.jsonl" \
    --eval-data-path "$OUT/dataset/sharegpt_test.jsonl" \
    --output-dir "$OUT/outputs" --cache-dir "$OUT/cache" --chat-template smollm2 \
    --max-length "$MAXLEN" --batch-size 2 --num-epochs 1 --total-steps "$STEPS" \
    --learning-rate 3e-4 --eval-interval "$STEPS" --log-interval 10 --report-to none
CKPT=$(ls -d "$OUT"/outputs/step_* "$OUT"/outputs/epoch_* 2>/dev/null | sort -V | tail -1 || true)
[ -n "$CKPT" ] || { echo "error: training wrote no checkpoint under $OUT/outputs" >&2; exit 1; }
echo "   checkpoint: $CKPT"

echo "== 4/6 bench: vanilla vs this demo's draft (chain 3/1/4) on 3 MT-bench questions (a $STEPS-step draft is"
echo "   far too weak to speed anything up; step 6 shows the shipped one)"
$PY bench_model_speedup.py --model-path $MODEL --speculative-draft-model-path "$CKPT" \
    --config-list "1,0,1,1" "1,3,1,4" --benchmark-list mtbench:3 --max-new-tokens 64 \
    --output "$OUT/bench.jsonl"

echo "== 5/6 export for SGLang and validate it"
$PY -m specforge export --to sglang --checkpoint "$CKPT" --output-dir "$OUT/export-sglang" \
    --target-model-path $MODEL --force
$PY -m specforge validate "$OUT/export-sglang" --no-decode

echo "== 6/6 the shipped draft $SHIPPED (examples/run_smollm2_eagle3.sh, continued once), alone (eagle3) and behind"
echo "   prompt lookup (eagle3+lookup), chain $SHIPPED_CONFIG with --min-draft-prob $MIN_DRAFT_PROB, against vanilla"
echo "   greedy and prompt lookup: $BENCH_Q MT-bench questions, both turns, $BENCH_TOKENS new tokens, greedy (same output for all)"
$PY bench_model_speedup.py --model-path $MODEL --speculative-draft-model-path "$SHIPPED" \
    --config-list "1,0,0,0" "$SHIPPED_CONFIG" --hybrid-lookup --min-draft-prob "$MIN_DRAFT_PROB" \
    --baselines prompt_lookup --benchmark-list "mtbench:$BENCH_Q" --interleave \
    --max-new-tokens "$BENCH_TOKENS" --no-plots --output "$OUT/bench_shipped.jsonl"
echo "== done: outputs under $OUT/"
