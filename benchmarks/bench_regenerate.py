"""Measure regeneration speed: the embedded engine at several batch sizes (rows/s, generated tokens/s).

    python benchmarks/bench_regenerate.py --rows 32 --max-tokens 64 --batch-sizes 1 8 32

Takes the first user turn of N real ShareGPT conversations (prepare-data, offline), and answers them with
the embedded batched engine on the default model (greedy, bf16 where the CPU supports it), once per batch
size, after a short untimed warm-up. Prints one line per batch size; figures go to BENCHMARKS.md, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time


def first_user_turns(n: int) -> list[list[dict]]:
    from specforge.data.prepare import prepare_dataset

    with tempfile.TemporaryDirectory() as d:
        files, _ = prepare_dataset("sharegpt", d, sample_size=4 * n, progress=False)
        rows = [json.loads(line) for line in open(files["all"], encoding="utf-8")]
    out = []
    for r in rows:
        user = next((t for t in r["conversations"] if t["role"] == "user" and t["content"].strip()), None)
        if user is not None:
            out.append([{"role": "user", "content": user["content"][:2000]}])
        if len(out) == n:
            break
    return out


async def answer_all(gen, chats, max_tokens):
    comps = await asyncio.gather(*(gen.chat(c, max_tokens) for c in chats))
    return sum(c.completion_tokens for c in comps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)

    import torch

    from specforge.cli import setup_logging
    from specforge.modeling.loading import load_target_model, load_tokenizer, resolve_device
    from specforge.regen.embedded import EmbeddedGenerator, generation_dtype

    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = generation_dtype(args.dtype, device)
    tok = load_tokenizer(args.model)
    model = load_target_model(args.model, dtype=dtype, device=device)
    chats = first_user_turns(args.rows)
    results = []
    print(f"# {args.model} {device} {str(dtype).replace('torch.', '')} threads={torch.get_num_threads()} "
          f"rows={len(chats)} max_tokens={args.max_tokens}", flush=True)
    for b in args.batch_sizes:
        gen = EmbeddedGenerator(model, tok, batch_size=b)
        asyncio.run(answer_all(gen, chats[: min(b, 2)], 4))  # warm-up
        t0 = time.perf_counter()
        tokens = asyncio.run(answer_all(gen, chats, args.max_tokens))
        wall = time.perf_counter() - t0
        gen.close()
        rec = {"batch_size": b, "rows": len(chats), "tokens": tokens, "wall_s": round(wall, 2),
               "rows_per_s": round(len(chats) / wall, 3), "tok_per_s": round(tokens / wall, 1)}
        results.append(rec)
        print(f"embedded batch {b:>3}: {rec['rows_per_s']:.2f} rows/s, {rec['tok_per_s']:.1f} generated tok/s "
              f"({tokens} tokens in {wall:.1f} s)", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
