"""Time build-cache on real ShareGPT conversations with the default model's tokenizer.

    python benchmarks/bench_build_cache.py --sample-size 10000 --num-proc 2

Prepares N conversations with prepare-data (offline ShareGPT), then times a cold build of the dataset
cache (tokenise + masks + draft vocab + save) and a warm run (cache hit), and prints rows/s, tokens/s and
the projected time for the 68K-conversation ShareGPT set. Results are recorded in
BENCHMARKS.md, not asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample-size", type=int, default=10000)
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--chat-template", default="smollm2")
    p.add_argument("--target-model-path", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--work-dir", default=None, help="where data and cache go (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)

    from specforge.cli import setup_logging
    from specforge.data.cache import build_eagle3_dataset_cache
    from specforge.data.prepare import prepare_dataset
    from specforge.modeling.loading import load_tokenizer

    setup_logging()
    logging.getLogger("specforge.data.prepare").setLevel(logging.ERROR)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_build_cache_"))
    t0 = time.perf_counter()
    files, stats = prepare_dataset("sharegpt", work / "data", sample_size=args.sample_size, progress=False)
    t_prepare = time.perf_counter() - t0
    tok = load_tokenizer(args.target_model_path)
    cache = work / f"cache-{os.getpid()}"

    def build():
        return build_eagle3_dataset_cache(
            args.target_model_path, files["all"], cache_dir=cache, chat_template=args.chat_template,
            max_length=args.max_length, num_proc=args.num_proc, tokenizer=tok,
        )

    def cpu_seconds() -> float:
        # Parent (incl. the tokenizer's Rust threads) + finished worker processes: the work done, which
        # unlike wall time does not depend on what else the shared machine is running.
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu_seconds(), time.perf_counter()
    res = build()
    t_cold, c_cold = time.perf_counter() - t0, cpu_seconds() - c0
    t0 = time.perf_counter()
    hit = build()
    t_warm = time.perf_counter() - t0
    assert hit.hit
    rows = len(res.train)
    tokens = sum(len(x) for x in res.train["input_ids"])
    fig = {
        "rows": rows, "tokens": tokens, "num_proc": args.num_proc, "max_length": args.max_length,
        "chat_template": args.chat_template, "prepare_s": round(t_prepare, 2), "cold_build_s": round(t_cold, 2),
        "rows_per_s": round(rows / t_cold, 1), "tokens_per_s": round(tokens / t_cold),
        "projected_68k_s": round(68000 / (rows / t_cold), 1), "cold_build_cpu_s": round(c_cold, 1),
        "rows_per_cpu_s": round(rows / c_cold, 1), "cache_hit_s": round(t_warm, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(fig, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
