#!/usr/bin/env bash
# EAGLE-3 draft for Llama-3.1-8B-Instruct, trained online with the target tensor-parallel over the GPUs:
# the seed's examples/run_llama3_eagle3_sgl_online.sh, run as a user with GPUs and a model hub would.
# Not run by CI (tests/test_examples.py checks that every flag passed to specforge exists).
#
#   bash examples/run_llama3_eagle3_online.sh            # WORK_DIR=./llama3-8b-eagle3 by default
#
# Needs: `hf auth login` with access to meta-llama/Llama-3.1-8B-Instruct, `wandb login` (or REPORT_TO=none),
# and, for the regeneration step (the biggest single lever on τ), `pip install sglang` (REGENERATE=0 skips it).
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT_DIR"

MODEL_PATH=${MODEL_PATH:-meta-llama/Llama-3.1-8B-Instruct}
WORK_DIR=${WORK_DIR:-$PWD/llama3-8b-eagle3}
DATASET_PATH=$WORK_DIR/dataset
CACHE_DIR=$WORK_DIR/cache
OUTPUT_DIR=$WORK_DIR/outputs
NUM_GPUS=${NUM_GPUS:-4}
CHAT_TEMPLATE=${CHAT_TEMPLATE:-llama3}
MAX_LENGTH=${MAX_LENGTH:-2048}
REGENERATE=${REGENERATE:-1}
NUM_SERVERS=${NUM_SERVERS:-4}
REPORT_TO=${REPORT_TO:-wandb}
mkdir -p "$DATASET_PATH" "$CACHE_DIR" "$OUTPUT_DIR"

# 1. Conversations JSONL ({"id", "conversations": [{"role", "content"}, ...]}); ultrachat needs the hub.
python scripts/prepare_data.py --dataset sharegpt --output_path "$DATASET_PATH"
python scripts/prepare_data.py --dataset ultrachat --output_path "$DATASET_PATH"

# 2. Regenerate every answer with the target (the draft learns the target's own text), through SGLang
#    servers, one per GPU, round-robin; failed rows go to error.jsonl, a rerun resumes.
if [ "$REGENERATE" = 1 ]; then
    PORTS=()
    for i in $(seq 1 "$NUM_SERVERS"); do
        CUDA_VISIBLE_DEVICES=$((i - 1)) python3 -m sglang.launch_server --model "$MODEL_PATH" \
            --cuda-graph-bs 1 2 4 8 16 32 64 128 256 512 --dtype bfloat16 --mem-frac=0.8 --port $((30000 + i)) &
        PORTS+=("127.0.0.1:$((30000 + i))")
    done
    trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
    for i in $(seq 1 "$NUM_SERVERS"); do  # wait until every server answers
        until curl -sf "http://127.0.0.1:$((30000 + i))/health" >/dev/null; do sleep 10; done
    done
    for name in sharegpt ultrachat; do
        python scripts/generate_data_by_target.py \
            --model-name "$MODEL_PATH" \
            --raw-data-file "$DATASET_PATH/$name.jsonl" \
            --output-dir "$WORK_DIR/generated-dataset/$name" \
            --max-concurrency 512 \
            --num-per-shard 50000 \
            --server-address-port "${PORTS[@]}"
    done
    kill $(jobs -p) 2>/dev/null || true
    SOURCES=("$WORK_DIR"/generated-dataset/{sharegpt,ultrachat}/shard_*.jsonl)
else
    SOURCES=("$DATASET_PATH/sharegpt.jsonl" "$DATASET_PATH/ultrachat.jsonl")
fi

# 3. One train/test split of both sets (5 % test, fixed seed).
python - "$DATASET_PATH" "${SOURCES[@]}" <<'PY'
import json, random, sys
out, files = sys.argv[1], sys.argv[2:]
rows = [line for f in files for line in open(f, encoding="utf-8") if line.strip()]
random.Random(0).shuffle(rows)
n_test = max(1, len(rows) // 20)
for name, part in (("test", rows[:n_test]), ("train", rows[n_test:])):
    with open(f"{out}/sharegpt_ultrachat_{name}.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(r if r.endswith("\n") else r + "\n" for r in part)
print(f"{len(rows) - n_test} train / {n_test} test rows")
PY

# 4. Tokenise once (loss masks + the draft vocab), and look at two samples (green = trained tokens).
python scripts/build_eagle3_dataset_cache.py \
    --target-model-path "$MODEL_PATH" \
    --draft-model-config ./configs/llama3-8B-eagle3.json \
    --train-data-path "$DATASET_PATH/sharegpt_ultrachat_train.jsonl" \
    --eval-data-path "$DATASET_PATH/sharegpt_ultrachat_test.jsonl" \
    --cache-dir "$CACHE_DIR" \
    --chat-template "$CHAT_TEMPLATE" \
    --max-length "$MAX_LENGTH" \
    --view-train-data 1 2

# 5. Train: the target sharded over NUM_GPUS (--tp-size), the draft data-parallel. The EAGLE repository's
#    schedule (800k steps, lr 5e-5); checkpoints OUTPUT_DIR/epoch_<i>/; add `--resume` to continue a run.
torchrun \
    --standalone \
    --nproc_per_node "$NUM_GPUS" \
    scripts/train_eagle3_sgl_online.py \
    --target-model-path "$MODEL_PATH" \
    --model-path "$MODEL_PATH" \
    --draft-model-config ./configs/llama3-8B-eagle3.json \
    --train-data-path "$DATASET_PATH/sharegpt_ultrachat_train.jsonl" \
    --eval-data-path "$DATASET_PATH/sharegpt_ultrachat_test.jsonl" \
    --tp-size "$NUM_GPUS" \
    --output-dir "$OUTPUT_DIR" \
    --num-epochs 10 \
    --batch-size 1 \
    --learning-rate 5e-5 \
    --draft-attention-backend flex_attention \
    --max-length "$MAX_LENGTH" \
    --chat-template "$CHAT_TEMPLATE" \
    --cache-dir "$CACHE_DIR" \
    --mem-frac=0.4 \
    --total-steps=800000 \
    --dist-timeout=10 \
    --wandb-project llama3-8b-eagle3 \
    --wandb-name sgl-online \
    --report-to "$REPORT_TO"

DRAFT=$(ls -d "$OUTPUT_DIR"/epoch_* | sort -t_ -k2 -n | tail -1)

# 6. τ and speed-up with the built-in decoder (configs: batch_size,num_steps,topk,num_verify_tokens).
config_list=(
    "4,3,1,4"
    "4,7,10,60"
)
python3 bench_model_speedup.py \
    --model-path "$MODEL_PATH" \
    --speculative-draft-model-path "$DRAFT" \
    --port 20001 \
    --trust-remote-code \
    --mem-fraction-static 0.8 \
    --tp-size 4 \
    --device cuda \
    --config-list "${config_list[@]}" \
    --benchmark-list mtbench:80 gsm8k:200 humaneval:200 math500:200 \
    --output "$WORK_DIR/output.jsonl"

# 7. Export for SGLang and vLLM, and check each export loads completely and decodes (τ > 1).
specforge export --to sglang --checkpoint "$DRAFT" --output-dir "$WORK_DIR/export-sglang" --target-model-path "$MODEL_PATH"
specforge export --to vllm --checkpoint "$DRAFT" --output-dir "$WORK_DIR/export-vllm" --target-model-path "$MODEL_PATH"
specforge validate "$WORK_DIR/export-sglang" --target-model-path "$MODEL_PATH" --device cuda
specforge validate "$WORK_DIR/export-vllm" --target-model-path "$MODEL_PATH" --device cuda
