"""What sequence packing and batch overlap could still win: padding left by the trainer's batching, and the
time the data path takes per step.

1. Padding: the training rows of a dataset cache (tokenised as ``specforge train`` does), cut into batches by
   the trainer's own ``epoch_batches`` (length-sorted windows) for each batch size; reported as the share of
   padded tokens in the padded batches, i.e. the most that packing rows into full sequences could save.
2. Data path (offline): reading one batch from a hidden-state store and collating it (what an overlapped
   loader would hide), in ms per batch.

    python benchmarks/bench_padding.py --train-data-path TRAIN.jsonl --max-length 768 --batch-sizes 1 2 4 8 \\
        [--hidden-states-path STORE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def padding_share(lengths: list[int], batch_size: int, seed: int = 0) -> tuple[float, int]:
    """(padded share of the batches' tokens, number of batches) for one epoch of the trainer's order."""
    from specforge.train.batching import epoch_batches

    batches = epoch_batches(lengths, batch_size, seed, 0)
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - real / padded, len(batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-model-path", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--train-data-path", required=True)
    ap.add_argument("--cache-dir", default="./cache")
    ap.add_argument("--chat-template", default="auto")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--draft-vocab-size", type=int, default=8192)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--hidden-states-path", help="also time reading + collating batches from this store")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from specforge.data.cache import build_eagle3_dataset_cache
    from specforge.data.collate import row_lengths

    cache = build_eagle3_dataset_cache(args.target_model_path, args.train_data_path, cache_dir=args.cache_dir,
                                       chat_template=args.chat_template, max_length=args.max_length,
                                       draft_vocab_size=args.draft_vocab_size)
    lengths = row_lengths(cache.train)
    print(f"{len(lengths)} rows, mean length {sum(lengths) / len(lengths):.0f} tokens (max length {args.max_length})")
    print("| batch size | batches | padded share of batch tokens (most packing could save) |")
    print("|---:|---:|---:|")
    for bs in args.batch_sizes:
        share, n = padding_share(lengths, bs)
        print(f"| {bs} | {n} | {100 * share:.1f} % |")
    if args.hidden_states_path:
        from specforge.data.hidden_states import HiddenStateRows, collate_hidden_states

        rows = HiddenStateRows(args.hidden_states_path, "train")
        n = min(len(rows), 50)
        t0 = time.perf_counter()
        for i in range(n):
            collate_hidden_states([rows[i]], 0)
        ms = 1000 * (time.perf_counter() - t0) / n
        print(f"offline data path: {ms:.1f} ms per batch of 1 (read + collate, mean of {n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
