#!/usr/bin/env bash
# The CPU recipe for the default target (the seed's run_llama3_eagle3_sgl_online.sh, for SmolLM2-135M-Instruct):
#   prepare ShareGPT -> regenerate the answers with the target (greedy, embedded) -> build the cache + train
#   -> benchmark -> export for SGLang and vLLM -> validate.
# Every stage skips work already done, so re-running the same command resumes after any interruption.
#
#   bash examples/run_smollm2_eagle3.sh [WORK_DIR]        # default WORK_DIR: ~/specforge-recipe (outside the repo)
#
# Sizes (environment; defaults = the shipped draft's first run): ROWS questions to regenerate (2000), EVAL_ROWS of them
# held out (40), REGEN_EPOCHS (2) and RAW_ROWS (1000) for the training mix, EPOCHS over it (1), LR (2e-3),
# DRAFT_VOCAB (8192), MAXLEN (768), DEVICE (cpu|cuda, default auto), THREADS for the regeneration (unset =
# torch's choice; 1 on a machine shared with other jobs), INIT_FROM (a checkpoint dir or a shipped draft's name,
# e.g. smollm2-135m-instruct-eagle3: start from those weights with a fresh schedule instead of from scratch),
# TTT (3) and FREEZE_HEAD (0), as the ablation in BENCHMARKS.md chose them for a CPU draft (TTT 3: 1.5x the trained
# tokens per hour, as accurate for draft lengths 1-3; a trained head is better at positions 1-2). The shipped
# draft is that first run continued once (INIT_FROM=<its epoch_0> LR=1e-3) on 6,096 regenerated questions
# (REGEN_EPOCHS=1) plus 400 original turns; its card has the exact commands. The first shipped draft used
# ROWS=600 REGEN_EPOCHS=3 RAW_ROWS=900 LR=1e-3 TTT=7 FREEZE_HEAD=1.
# On this 2-core CPU: regeneration ~35 questions/min (~1 h), training ~1 h 15 min.
# On a GPU the same command runs unchanged (DEVICE=cuda).
set -euo pipefail
WORK=${1:-${SPECFORGE_RECIPE_DIR:-$HOME/specforge-recipe}}
PY=${PY:-python}
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
ROWS=${ROWS:-2000}
EVAL_ROWS=${EVAL_ROWS:-40}
REGEN_EPOCHS=${REGEN_EPOCHS:-2}
RAW_ROWS=${RAW_ROWS:-1000}
EPOCHS=${EPOCHS:-1}
LR=${LR:-2e-3}
MAXLEN=${MAXLEN:-768}
DEVICE=${DEVICE:-auto}
THREADS_FLAG=(); [ -n "${THREADS:-}" ] && THREADS_FLAG=(--threads "$THREADS")
DRAFT_VOCAB=${DRAFT_VOCAB:-8192}
TTT=${TTT:-3}
FREEZE=(); [ "${FREEZE_HEAD:-0}" = 1 ] && FREEZE=(--freeze-lm-head)
mkdir -p "$WORK"
cd "$(dirname "$0")/.."

echo "== 1/6 prepare-data: every ShareGPT conversation, 95/5 split"
if [ ! -s "$WORK/dataset/sharegpt_train.jsonl" ]; then
    $PY scripts/prepare_data.py --dataset sharegpt --output-path "$WORK/dataset" --split-eval
fi
# The target answers the first user turn of every conversation whose question is 10..2000 characters
# (the shipped draft was trained this way: one turn per row regenerates ~3x more answers per hour than three).
if [ ! -s "$WORK/dataset/sharegpt_train_1turn.jsonl" ]; then
    $PY - "$WORK/dataset/sharegpt_train.jsonl" "$WORK/dataset/sharegpt_train_1turn.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
tmp = dst + ".tmp"
kept = 0
with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as g:
    for line in f:
        row = json.loads(line)
        turns = [t for t in row["conversations"] if t["role"] != "system"]
        if not turns or turns[0]["role"] != "user" or not 10 <= len(turns[0]["content"]) <= 2000:
            continue
        g.write(json.dumps({"id": row["id"], "conversations": turns[:1]}, ensure_ascii=False) + "\n")
        kept += 1
os.replace(tmp, dst)
print(f"kept {kept} conversations (first user turn, 10..2000 characters)")
PY
fi

head -n "$ROWS" "$WORK/dataset/sharegpt_train_1turn.jsonl" > "$WORK/dataset/regen_input.jsonl"

echo "== 2/6 regenerate: the target answers every question (greedy, embedded, resumable)"
RESUME=(); [ -f "$WORK/regen/run.json" ] && RESUME=(--resume)
$PY scripts/generate_data_by_target.py --model-name $MODEL \
    --raw-data-file "$WORK/dataset/regen_input.jsonl" --output-dir "$WORK/regen" \
    --num-per-shard 250 --max-tokens 256 --temperature 0 --batch-size 64 "${THREADS_FLAG[@]}" \
    --device "$DEVICE" "${RESUME[@]}"
# build-cache reads one file: the finished shards, in order (written atomically, so never a torn line); the
# last EVAL_ROWS regenerated rows are held out for the eval (its simulated tau is compared with bench's tau).
cat "$WORK"/regen/shard_*.jsonl > "$WORK/dataset/regenerated.jsonl.tmp"
head -n -"$EVAL_ROWS" "$WORK/dataset/regenerated.jsonl.tmp" > "$WORK/dataset/regen_train.jsonl.tmp"
tail -n "$EVAL_ROWS" "$WORK/dataset/regenerated.jsonl.tmp" > "$WORK/dataset/regen_eval.jsonl.tmp"
mv "$WORK/dataset/regen_train.jsonl.tmp" "$WORK/dataset/regen_train.jsonl"
mv "$WORK/dataset/regen_eval.jsonl.tmp" "$WORK/dataset/regen_eval.jsonl"
rm "$WORK/dataset/regenerated.jsonl.tmp"

# Training rows: every regenerated answer REGEN_EPOCHS times (the target's own text: what the draft must predict
# at decode time), plus RAW_ROWS original ShareGPT first turns that were not regenerated (more topics for the
# same training time; the teacher is still the target's own next-token distribution on them).
if [ ! -s "$WORK/dataset/train_mix.jsonl" ] || [ "$WORK/dataset/regen_train.jsonl" -nt "$WORK/dataset/train_mix.jsonl" ]; then
    $PY - "$WORK/dataset" "$REGEN_EPOCHS" "$RAW_ROWS" <<'PY'
import json, os, sys
d, reps, raw_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
regen = open(os.path.join(d, "regen_train.jsonl"), encoding="utf-8").read().splitlines()
used = {json.loads(x)["id"] for x in open(os.path.join(d, "regen_input.jsonl"), encoding="utf-8")}
raw = []
with open(os.path.join(d, "sharegpt_train.jsonl"), encoding="utf-8") as f:
    for line in f:
        if len(raw) >= raw_rows:
            break
        row = json.loads(line)
        turns = [t for t in row["conversations"] if t["role"] != "system"][:2]
        if row["id"] in used or [t["role"] for t in turns] != ["user", "assistant"]:
            continue
        raw.append(json.dumps({"id": row["id"], "conversations": turns}, ensure_ascii=False))
tmp = os.path.join(d, "train_mix.jsonl.tmp")
with open(tmp, "w", encoding="utf-8") as g:
    g.write("\n".join(regen * reps + raw) + "\n")
os.replace(tmp, os.path.join(d, "train_mix.jsonl"))
print(f"training rows: {len(regen)} regenerated x {reps} + {len(raw)} original ShareGPT")
PY
fi

echo "== 3/6 train (online, bf16 where supported; resumes from the newest checkpoint)"
RESUME=(); [ -n "${INIT_FROM:-}" ] && RESUME=(--init-from "$INIT_FROM")
ls -d "$WORK"/outputs/step_* >/dev/null 2>&1 && RESUME=(--resume)
$PY scripts/train_eagle3_online.py \
    --target-model-path $MODEL --draft-vocab-size "$DRAFT_VOCAB" --ttt-length "$TTT" "${FREEZE[@]}" \
    --train-data-path "$WORK/dataset/train_mix.jsonl" \
    --eval-data-path "$WORK/dataset/regen_eval.jsonl" \
    --output-dir "$WORK/outputs" --cache-dir "$WORK/cache" --chat-template smollm2 \
    --max-length "$MAXLEN" --batch-size 2 --num-epochs "$EPOCHS" \
    --learning-rate "$LR" --warmup-ratio 0.02 --save-interval 200 --eval-interval 400 --log-interval 20 \
    --device "$DEVICE" --dtype auto --report-to tensorboard "${RESUME[@]}"
CKPT=$(ls -d "$WORK"/outputs/step_* "$WORK"/outputs/epoch_* 2>/dev/null | sort -V | tail -1)
echo "   newest checkpoint: $CKPT"

echo "== 4/6 bench: vanilla, prompt lookup and the draft (chain 3/1/4, 7/1/8, tree 6/10/60) on all of MT-bench,"
echo "   then the draft behind prompt lookup (--hybrid-lookup, 7/1/8 with --min-draft-prob 0.25)"
$PY bench_model_speedup.py --model-path $MODEL --speculative-draft-model-path "$CKPT" \
    --config-list 1,0,0,0 1,3,1,4 1,7,1,8 1,6,10,60 --baselines prompt_lookup \
    --benchmark-list mtbench:80 gsm8k:10 humaneval:10 math500:10 --max-new-tokens 64 \
    --interleave --device "$DEVICE" --output "$WORK/bench.jsonl"
$PY bench_model_speedup.py --model-path $MODEL --speculative-draft-model-path "$CKPT" \
    --config-list 1,1,1,2 1,7,1,8 --hybrid-lookup --min-draft-prob 0.25 --baselines prompt_lookup \
    --benchmark-list mtbench:80 gsm8k:10 humaneval:10 math500:10 --max-new-tokens 64 \
    --interleave --device "$DEVICE" --output "$WORK/bench_hybrid.jsonl"

echo "== 5/6 export for SGLang and vLLM"
$PY -m specforge export --to sglang --checkpoint "$CKPT" --output-dir "$WORK/export-sglang" \
    --target-model-path $MODEL --force
$PY -m specforge export --to vllm --checkpoint "$CKPT" --output-dir "$WORK/export-vllm" \
    --target-model-path $MODEL --force

echo "== 6/6 validate (with a short decode check against the target)"
$PY -m specforge validate "$WORK/export-sglang" --target-model-path $MODEL
$PY -m specforge validate "$WORK/export-vllm" --no-decode
echo "== done: $WORK"
