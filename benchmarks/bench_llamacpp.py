"""llama.cpp figures for a draft: tokens/s without speculation, with llama.cpp's n-gram speculation and with the
EAGLE-3 draft at several draft lengths, τ per benchmark; optionally the built-in decoder on the same prompts.

Re-run it on any draft (a checkpoint dir or a .gguf made by ``specforge export --to gguf``)::

    python benchmarks/bench_llamacpp.py --draft outputs/smollm2-eagle3/epoch_0 --n 5 --max-new-tokens 128 \\
        --lengths 1 2 4 6 --output bench_llamacpp.jsonl [--builtin]

Prints one markdown table (the BENCHMARKS.md format) built from the JSONL records of both engines.
llama.cpp runs with 1 thread (2 threads collapse on 2-vCPU machines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root is the parent of this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def table(records: list[dict]) -> str:
    """Markdown rows: benchmark, engine, method, config, τ, accepted/drafted, tok/s, speed-up."""
    rows = ["| benchmark | engine | method | config | τ | accepted / drafted | tok/s | speed-up |",
            "|---|---|---|---|---:|---:|---:|---:|"]
    for r in records:
        acc = (f"{r['accepted_tokens']} / {r['drafted_tokens']}" if r.get("drafted_tokens") is not None else "–")
        tau = f"{r['accept_length']:.2f}" if r.get("accept_length") else "–"
        sp = f"{r['speedup']:.2f}×" if r.get("speedup") else "–"
        rows.append(f"| {r['benchmark']} ({r['num_samples']}) | {r.get('engine', 'builtin')} | {r['method']} | "
                    f"{r['config_str']} | {tau} | {acc} | {r['tokens_per_s']:.1f} | {sp} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draft", required=True, help="draft checkpoint dir or .gguf")
    ap.add_argument("--model-path", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--benchmarks", nargs="+", default=["mtbench", "gsm8k", "humaneval"])
    ap.add_argument("--n", type=int, default=5, help="samples per benchmark")
    ap.add_argument("--lengths", nargs="+", type=int, default=[1, 2, 4, 6], help="EAGLE-3 draft lengths")
    ap.add_argument("--ngram", type=int, default=8, help="n-gram draft length")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--builtin", action="store_true", help="also run specforge's decoder (fp32 HF target)")
    ap.add_argument("--output", default="bench_llamacpp.jsonl")
    a = ap.parse_args()

    from specforge.bench.llamacpp import run_llamacpp_bench
    from specforge.bench.runner import BenchOptions, run_bench
    from specforge.cli import setup_logging

    setup_logging()
    benches = [f"{b}:{a.n}" for b in a.benchmarks]
    configs = [(1, 0, 1, 1)] + [(1, k, 1, k + 1) for k in a.lengths]
    opts = BenchOptions(a.model_path, a.draft, configs, benches, a.output, max_new_tokens=a.max_new_tokens,
                        baselines=["prompt_lookup"], prompt_lookup_num_tokens=a.ngram, plots=True)
    records = run_llamacpp_bench(opts, threads=a.threads)
    if a.builtin and not a.draft.endswith(".gguf"):
        out = str(Path(a.output).with_suffix("")) + "_builtin.jsonl"
        b_opts = BenchOptions(a.model_path, a.draft, configs, benches, out, max_new_tokens=a.max_new_tokens,
                              baselines=[], plots=False)
        records += run_bench(b_opts)
    print(table(records))
    Path(a.output).with_suffix(".md").write_text(table(records) + "\n", encoding="utf-8")
    print(json.dumps({"records": len(records), "output": a.output}))


if __name__ == "__main__":
    main()
