#!/usr/bin/env bash
# The CPU recipe for the default target (the seed's run_llama3_eagle3_sgl_online.sh, for SmolLM2-135M-Instruct):
#   prepare ShareGPT -> regenerate the answers with the target (greedy, embedded) -> build the cache + train
#   -> benchmark -> export for SGLang and vLLM -> validate.
# Every stage skips work already done, so re-running the same command resumes after any interruption.
#
#   bash examples/run_smollm2_eagle3.sh [WORK_DIR]        # default WORK_DIR: ~/specforge-recipe (outside the repo)
#
# Sizes (environment): ROWS conversations to regenerate (default 4000), STEPS training steps (default 20000),
# MAXLEN (default 1024), DEVICE (cpu|cuda, default auto), THREADS for the regeneration (unset = torch's choice;
# 1 on a machine shared with other jobs).
# On a GPU the same command runs unchanged (DEVICE=cuda).
set -euo pipefail
WORK=${1:-${SPECFORGE_RECIPE_DIR:-$HOME/specforge-recipe}}
PY=${PY:-python}
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
ROWS=${ROWS:-4000}
STEPS=${STEPS:-20000}
MAXLEN=${MAXLEN:-1024}
DEVICE=${DEVICE:-auto}
THREADS_FLAG=(); [ -n "${THREADS:-}" ] && THREADS_FLAG=(--threads "$THREADS")
DRAFT_VOCAB=${DRAFT_VOCAB:-16384}
mkdir -p "$WORK"
cd "$(dirname "$0")/.."

echo "== 1/6 prepare-data: every ShareGPT conversation, 95/5 split"
if [ ! -s "$WORK/dataset/sharegpt_train.jsonl" ]; then
    $PY scripts/prepare_data.py --dataset sharegpt --output-path "$WORK/dataset" --split-eval
fi
# The target re-answers up to 3 user turns of conversations whose questions are short enough to leave room for
# the answers within MAXLEN tokens (longer ones would be cut away by the cache anyway).
if [ ! -s "$WORK/dataset/sharegpt_train_3turns.jsonl" ]; then
    $PY - "$WORK/dataset/sharegpt_train.jsonl" "$WORK/dataset/sharegpt_train_3turns.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
tmp = dst + ".tmp"
kept = 0
with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as g:
    for line in f:
        row = json.loads(line)
        turns, users = [], 0
        for t in (t for t in row["conversations"] if t["role"] != "system"):
            users += t["role"] == "user"
            if users > 3:
                break
            turns.append(t)
        if not turns or turns[0]["role"] != "user":
            continue
        if sum(len(t["content"]) for t in turns if t["role"] == "user") > 3000:
            continue
        g.write(json.dumps({**row, "conversations": turns}, ensure_ascii=False) + "\n")
        kept += 1
os.replace(tmp, dst)
print(f"kept {kept} conversations (first 3 user turns, questions <= 3000 characters)")
PY
fi
head -n "$ROWS" "$WORK/dataset/sharegpt_train_3turns.jsonl" > "$WORK/dataset/regen_input.jsonl"

echo "== 2/6 regenerate: the target answers every user turn (greedy, embedded, resumable)"
RESUME=(); [ -f "$WORK/regen/run.json" ] && RESUME=(--resume)
$PY scripts/generate_data_by_target.py --model-name $MODEL \
    --raw-data-file "$WORK/dataset/regen_input.jsonl" --output-dir "$WORK/regen" \
    --num-per-shard 100 --max-tokens 512 --temperature 0 --batch-size 32 "${THREADS_FLAG[@]}" \
    --device "$DEVICE" "${RESUME[@]}"
# build-cache reads one file: the finished shards, in order (written atomically, so never a torn line).
cat "$WORK"/regen/shard_*.jsonl > "$WORK/dataset/regenerated.jsonl.tmp"
mv "$WORK/dataset/regenerated.jsonl.tmp" "$WORK/dataset/regenerated.jsonl"

echo "== 3/6 train (online, bf16 where supported; resumes from the newest checkpoint)"
RESUME=(); ls -d "$WORK"/outputs/step_* >/dev/null 2>&1 && RESUME=(--resume)
$PY scripts/train_eagle3_online.py \
    --target-model-path $MODEL --draft-vocab-size "$DRAFT_VOCAB" --ttt-length 7 \
    --train-data-path "$WORK/dataset/regenerated.jsonl" \
    --eval-data-path "$WORK/dataset/sharegpt_test.jsonl" \
    --output-dir "$WORK/outputs" --cache-dir "$WORK/cache" --chat-template smollm2 \
    --max-length "$MAXLEN" --batch-size 1 --num-epochs 10 --total-steps "$STEPS" \
    --learning-rate 3e-4 --warmup-ratio 0.02 --save-interval 500 --eval-interval 1000 --log-interval 50 \
    --device "$DEVICE" --dtype bfloat16 --report-to tensorboard "${RESUME[@]}"
CKPT=$(ls -d "$WORK"/outputs/step_* "$WORK"/outputs/epoch_* 2>/dev/null | sort -V | tail -1)
echo "   newest checkpoint: $CKPT"

echo "== 4/6 bench: vanilla, prompt lookup and the draft (chain 3/1/4, 7/1/8, tree 6/10/60) on all of MT-bench"
$PY bench_model_speedup.py --model-path $MODEL --speculative-draft-model-path "$CKPT" \
    --config-list 1,0,0,0 1,3,1,4 1,7,1,8 1,6,10,60 --baselines prompt_lookup \
    --benchmark-list mtbench:80 gsm8k:50 humaneval:50 math500:50 --max-new-tokens 256 \
    --device "$DEVICE" --output "$WORK/bench.jsonl"

echo "== 5/6 export for SGLang and vLLM"
$PY -m specforge export --to sglang --checkpoint "$CKPT" --output-dir "$WORK/export-sglang" \
    --target-model-path $MODEL --force
$PY -m specforge export --to vllm --checkpoint "$CKPT" --output-dir "$WORK/export-vllm" \
    --target-model-path $MODEL --force

echo "== 6/6 validate (with a short decode check against the target)"
$PY -m specforge validate "$WORK/export-sglang" --target-model-path $MODEL
$PY -m specforge validate "$WORK/export-vllm" --no-decode
echo "== done: $WORK"
