"""Run the target once over a data set and store its hidden states for offline training.

Writes OUTPUT_DIR/{train,eval}-NNNNN.safetensors (input ids, loss mask, the 3 aux hidden states and the
final normed hidden state per token; bf16 by default, fp8 with per-token scales at half the size with
--storage-dtype float8), meta.json and the draft-vocab mapping; then
`specforge train --hidden-states-path OUTPUT_DIR ...` trains without running the target. Interrupted?
Re-run the same command: finished shards are kept.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("specforge.prepare_hidden_states")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `specforge prepare-hidden-states` (the data/model flags mean what they mean for `train`)."""
    from specforge.flags import add_target_flag

    add_target_flag(parser)
    parser.add_argument("--draft-model-config", default=None, help="draft config.json (gives the draft vocab size)")
    parser.add_argument("--draft-vocab-size", type=int, default=None, help="overrides the config's draft_vocab_size")
    parser.add_argument("--train-data-path", required=True, help="training conversations JSONL")
    parser.add_argument("--eval-data-path", default=None, help="evaluation conversations JSONL (optional)")
    parser.add_argument("--chat-template", default="auto", help="registered chat template name, or auto")
    parser.add_argument("--max-length", type=int, default=2048, help="truncate samples to this many tokens")
    parser.add_argument("--cache-dir", default="./cache", help="dataset cache root")
    parser.add_argument("--num-proc", type=int, default=1, help="tokeniser worker processes")
    parser.add_argument("--output-dir", required=True, help="where the hidden-state shards go")
    parser.add_argument("--storage-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32", "float8"),
                        help="dtype of the stored hidden states. float8: float8_e4m3fn with one "
                             "float32 scale per token per tensor (amax/448), about half the size of bfloat16 "
                             "(SmolLM2: 2.3 instead of 4.6 KB per token); training dequantises it to bf16 "
                             "(fp32 under --dtype float32)")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per shard")
    parser.add_argument("--dtype", default="auto", help="compute dtype of the target (as for train)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the dataset cache, then write the store."""
    import os

    from specforge.data.hidden_states import prepare_hidden_states
    from specforge.errors import SpecforgeError
    from specforge.flags import target_from_args
    from specforge.modeling.loading import (
        DEFAULT_TARGET,
        load_config,
        load_target_model,
        load_tokenizer,
        resolve_device,
    )
    from specforge.modeling.target import HFEagle3TargetModel
    from specforge.train.components import (
        DataOptions,
        build_cache,
        build_draft_config,
        resolve_train_dtype,
    )

    for flag, path in (("--train-data-path", args.train_data_path), ("--eval-data-path", args.eval_data_path),
                       ("--draft-model-config", args.draft_model_config)):
        if path and not os.path.isfile(path):
            raise SpecforgeError(f"{flag} {path}: file not found; check the path.")
    for flag, value in (("--max-length", args.max_length), ("--shard-size", args.shard_size),
                        ("--num-proc", args.num_proc)):
        if value < 1:
            raise SpecforgeError(f"{flag} must be >= 1 (got {value}).")
    target_path = target_from_args(args) or DEFAULT_TARGET
    device = resolve_device(args.device)
    dtype = resolve_train_dtype(args.dtype, device)
    draft_config = build_draft_config(args.draft_model_config, args.draft_vocab_size, load_config(target_path))
    data = DataOptions(args.train_data_path, args.eval_data_path, args.cache_dir, args.chat_template, args.max_length,
                       args.num_proc)
    cache = build_cache(data, target_path, draft_config, load_tokenizer(target_path))
    target = HFEagle3TargetModel(load_target_model(target_path, dtype=dtype, device=device), draft_config=draft_config)
    source = {"target_model_path": str(target_path), "max_length": args.max_length,
              "draft_vocab_size": int(draft_config.draft_vocab_size)}
    meta = prepare_hidden_states(target, cache, args.output_dir, args.storage_dtype, args.shard_size, device,
                                 progress=not args.no_progress, source=source)
    splits = ", ".join(f"{k} {v['rows']} rows / {v['tokens']} tokens" for k, v in meta["splits"].items())
    print(f"prepare-hidden-states: {splits} -> {args.output_dir}")
    return 0
