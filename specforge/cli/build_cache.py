"""Tokenise conversations with a chat template, build loss masks and the draft vocabulary (cached).

The cache lands in CACHE_DIR/eagle3-<hash of all inputs>/; a second run with the same inputs reuses it.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("specforge.build_cache")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `specforge build-cache` (the seed's flags plus --num-proc and --draft-vocab-size)."""
    from specforge.eagle3.config import DEFAULT_DRAFT_VOCAB_CAP
    from specforge.flags import add_target_flag

    add_target_flag(parser)
    parser.add_argument("--draft-model-config", default=None,
                        help=f"draft config JSON; its draft_vocab_size sets the draft vocab (min({DEFAULT_DRAFT_VOCAB_CAP}, V) when omitted)")
    parser.add_argument("--train-data-path", required=True, help="conversations JSONL for training")
    parser.add_argument("--eval-data-path", default=None, help="conversations JSONL for evaluation")
    parser.add_argument("--cache-dir", default="./cache", help="parent directory of the hashed cache dirs")
    parser.add_argument("--chat-template", default="auto",
                        help="'auto' (the tokenizer's own template) or a registered name: llama3, qwen, chatml, smollm2, ...")
    parser.add_argument("--max-length", type=int, default=2048, help="truncate rows to this many tokens")
    parser.add_argument("--draft-vocab-size", type=int, default=None, help="draft vocab size; overrides the draft config's draft_vocab_size")
    parser.add_argument("--num-proc", type=int, default=1, help="tokenisation worker processes")
    parser.add_argument("--allow-no-supervised-tokens", action="store_true",
                        help="build even when a split has no loss_mask==1 token (an error otherwise; train refuses it)")
    parser.add_argument("--view-train-data", type=int, nargs="*", default=[], metavar="I",
                        help="print these train rows (0-based) with loss_mask==1 tokens green, 0 red")


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the cache, print a summary, then the requested samples."""
    from specforge.data.cache import build_eagle3_dataset_cache
    from specforge.data.view import view_samples
    from specforge.errors import SpecforgeError
    from specforge.flags import target_from_args
    from specforge.modeling.loading import load_tokenizer

    args.target_model_path = target_from_args(args)
    tokenizer = load_tokenizer(args.target_model_path)
    res = build_eagle3_dataset_cache(
        args.target_model_path, args.train_data_path, args.eval_data_path, cache_dir=args.cache_dir,
        chat_template=args.chat_template, max_length=args.max_length, draft_vocab_size=args.draft_vocab_size,
        draft_model_config=args.draft_model_config, num_proc=args.num_proc, tokenizer=tokenizer,
        allow_no_supervised_tokens=args.allow_no_supervised_tokens,
    )
    m = res.meta

    def sup(split: str) -> str:
        n = (m.get(split) or {}).get("loss_tokens")
        return f" ({n} supervised tokens)" if n is not None else ""

    print(f"build-cache: {'cache hit' if res.hit else 'built'} {res.path}: {len(res.train)} train rows{sup('train')}"
          + (f", {len(res.eval)} eval rows{sup('eval')}" if res.eval is not None else "")
          + f", draft vocab {res.d2t.numel()} of {res.t2d.numel()} "
          f"(covers {100 * m.get('draft_vocab_coverage', 0):.1f}% of {m.get('loss_tokens', 0)} loss tokens)")
    bad = [i for i in args.view_train_data if not 0 <= i < len(res.train)]
    if bad:
        raise SpecforgeError(
            f"--view-train-data index {bad[0]} is out of range: the train set has {len(res.train)} rows (0-based)."
        )
    if args.view_train_data:
        view_samples(res.train, args.view_train_data, tokenizer)
    return 0
