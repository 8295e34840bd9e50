"""Measure regeneration speed: embedded engine per batch size, client vs `specforge serve`, client overhead.

    python benchmarks/bench_regenerate.py --rows 32 --max-tokens 32 --batch-sizes 1 8 32 \
        --concurrency 1 8 32 --threads 1

Takes the first user turn of N real ShareGPT conversations (prepare-data, offline) and answers them on the
default model (greedy, bf16 where the CPU supports it), after a short untimed warm-up:

* embedded: the batched engine in-process, once per ``--batch-sizes`` entry and ``--orders`` entry (rows in
  input order, as `specforge regenerate` sends them, or longest prompt first);
* server: specforge's OpenAI client (the regenerate server path) against `specforge serve` (same engine,
  batch = the largest concurrency, uvicorn on 127.0.0.1 in this process), once per ``--concurrency``;
* overhead: the client against a server that answers at once without generating, per request;
* llama.cpp: the target's GGUF in in-process llama.cpp servers (xllamacpp; 1 thread and ``--llamacpp-parallel``
  slots each) behind the same client, once per ``--llamacpp-servers`` entry; with an embedded run before it,
  also the share of answers identical to the torch engine's (greedy: the GGUF's quantized kernels vs the HF
  model in bf16/fp32).

Prints one line per measurement; figures go to BENCHMARKS.md, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time


def first_user_turns(n: int, chars: int = 2000) -> list[list[dict]]:
    from specforge.data.prepare import prepare_dataset

    with tempfile.TemporaryDirectory() as d:
        files, _ = prepare_dataset("sharegpt", d, sample_size=4 * n, progress=False)
        with open(files["all"], encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    out = []
    for r in rows:
        user = next((t for t in r["conversations"] if t["role"] == "user" and t["content"].strip()), None)
        if user is not None:
            out.append([{"role": "user", "content": user["content"][:chars]}])
        if len(out) == n:
            break
    return out


async def answer_all(gen, chats, max_tokens, texts=None):
    comps = await asyncio.gather(*(gen.chat(c, max_tokens) for c in chats))
    if texts is not None:
        texts[:] = [c.text for c in comps]
    return sum(c.completion_tokens for c in comps)


async def _warm_then_timed(gen, chats, max_tokens, concurrency, texts):
    """A short untimed warm-up, then every chat with at most ``concurrency`` in flight: (tokens, wall s)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(c, n):
        async with sem:
            return await gen.chat(c, n)

    await gen.astart()
    try:
        await asyncio.gather(*(one(c, 4) for c in chats[:2]))
        t0 = time.perf_counter()
        comps = await asyncio.gather(*(one(c, max_tokens) for c in chats))
        wall = time.perf_counter() - t0
    finally:
        await gen.aclose()
    texts[:] = [c.text for c in comps]
    return sum(c.completion_tokens for c in comps), wall


def bench_llamacpp(model: str, chats, args, torch_texts) -> list[dict]:
    """The target's GGUF in ``n`` in-process llama.cpp servers (1 thread, ``--llamacpp-parallel`` slots each),
    answered through specforge's OpenAI client, as `specforge regenerate --server-address-port` would."""
    from specforge.bench.llamacpp import LlamaCppServer
    from specforge.export.gguf import target_gguf_path
    from specforge.regen.client import ServerPool

    gguf = str(target_gguf_path(model))
    par = args.llamacpp_parallel
    out = []
    for n in args.llamacpp_servers:
        servers = [LlamaCppServer(gguf, threads=1, n_ctx=4096 * par, parallel=par, port=free_port())
                   for _ in range(n)]
        try:
            texts: list[str] = []
            pool = ServerPool([s.address for s in servers], model, timeout=600, max_retries=0)
            tokens, wall = asyncio.run(_warm_then_timed(pool, chats, args.max_tokens, n * par, texts))
        finally:
            for s in servers:
                s.close()
        rec = {"mode": "llamacpp", "servers": n, "parallel": par, "rows": len(chats),
               "tokens": tokens, "wall_s": round(wall, 2), "rows_per_s": round(len(chats) / wall, 3),
               "tok_per_s": round(tokens / wall, 1)}
        same = ""
        if torch_texts:
            rec["same_as_torch"] = sum(a.strip() == b.strip() for a, b in zip(texts, torch_texts)) / len(chats)
            same = f"; {rec['same_as_torch']:.0%} of the answers identical to the torch engine's"
        out.append(rec)
        print(f"llama.cpp {n} server(s) x {par} slots, 1 thread each: {rec['rows_per_s']:.2f} "
              f"rows/s, {rec['tok_per_s']:.1f} generated tok/s ({tokens} tokens in {wall:.1f} s){same}", flush=True)
    return out


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_thread(app):
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"127.0.0.1:{port}"


async def _client_run(addr, chats, max_tokens, concurrency):
    from specforge.regen.client import ServerPool

    pool = ServerPool([addr], "bench", timeout=600, max_retries=0)
    await pool.astart()
    sem = asyncio.Semaphore(concurrency)

    async def one(c):
        async with sem:
            return await pool.chat(c, max_tokens)

    t0 = time.perf_counter()
    comps = await asyncio.gather(*(one(c) for c in chats))
    wall = time.perf_counter() - t0
    await pool.aclose()
    return sum(c.completion_tokens for c in comps), wall


def bench_server(model, tok, chats, args) -> list[dict]:
    from specforge.regen.embedded import EmbeddedGenerator
    from specforge.regen.server import create_app

    gen = EmbeddedGenerator(model, tok, batch_size=max(args.concurrency))
    server, addr = _serve_thread(create_app(gen, "bench"))
    out = []
    try:
        asyncio.run(_client_run(addr, chats[:2], 4, 2))  # warm-up
        for c in args.concurrency:
            tokens, wall = asyncio.run(_client_run(addr, chats, args.max_tokens, c))
            rec = {"mode": "client+serve", "concurrency": c, "rows": len(chats), "tokens": tokens,
                   "wall_s": round(wall, 2), "rows_per_s": round(len(chats) / wall, 3),
                   "tok_per_s": round(tokens / wall, 1)}
            out.append(rec)
            print(f"client -> specforge serve, concurrency {c:>3}: {rec['rows_per_s']:.2f} rows/s, "
                  f"{rec['tok_per_s']:.1f} generated tok/s ({tokens} tokens in {wall:.1f} s)", flush=True)
    finally:
        server.should_exit = True
        gen.close()
    return out


def bench_overhead(n: int) -> dict:
    """Mean wall time per request of the client against a server that answers at once (no model)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": []}

    @app.post("/v1/chat/completions")
    async def chat():
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    server, addr = _serve_thread(app)
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    try:
        asyncio.run(_client_run(addr, chats[:5], 1, 1))
        _, wall = asyncio.run(_client_run(addr, chats, 1, 1))
    finally:
        server.should_exit = True
    rec = {"mode": "client overhead", "requests": n, "ms_per_request": round(1000 * wall / n, 2)}
    print(f"client overhead (instant server, sequential, server time included): {rec['ms_per_request']:.2f} ms "
          f"per request over {n}", flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-chars", type=int, default=2000, help="cut each question to this many characters")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 8, 32])
    p.add_argument("--orders", nargs="+", default=["input"], choices=["input", "longest"],
                   help="embedded: the order rows are submitted in (input: as regenerate does; longest: longest "
                        "prompt first, so rows of similar length share a batch)")
    p.add_argument("--repeats", type=int, default=1, help="embedded: run every (batch size, order) this many times")
    p.add_argument("--concurrency", type=int, nargs="*", default=[], help="client vs specforge serve")
    p.add_argument("--overhead-requests", type=int, default=0, help="client overhead: requests to an instant server")
    p.add_argument("--llamacpp-servers", type=int, nargs="*", default=[],
                   help="llama.cpp engine: number of servers (1 thread each), one run per entry")
    p.add_argument("--llamacpp-parallel", type=int, default=8, help="llama.cpp engine: slots per server")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)

    import torch

    from specforge.cli import setup_logging
    from specforge.modeling.loading import (
        load_target_model,
        load_tokenizer,
        resolve_device,
    )
    from specforge.regen.embedded import EmbeddedGenerator, generation_dtype

    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = generation_dtype(args.dtype, device)
    tok = load_tokenizer(args.model)
    model = load_target_model(args.model, dtype=dtype, device=device)
    chats = first_user_turns(args.rows, args.prompt_chars)
    results = []
    torch_texts: list[str] = []
    print(f"# {args.model} {device} {str(dtype).replace('torch.', '')} threads={torch.get_num_threads()} "
          f"rows={len(chats)} max_tokens={args.max_tokens} prompt_chars={args.prompt_chars}", flush=True)
    ordered = {"input": chats, "longest": sorted(chats, key=lambda c: -sum(len(m["content"]) for m in c))}
    for _ in range(args.repeats):
        for b in args.batch_sizes:
            for order in args.orders:
                gen = EmbeddedGenerator(model, tok, batch_size=b)
                asyncio.run(answer_all(gen, chats[: min(b, 2)], 4))  # warm-up
                t0 = time.perf_counter()
                texts: list[str] = []
                tokens = asyncio.run(answer_all(gen, ordered[order], args.max_tokens, texts))
                wall = time.perf_counter() - t0
                if order == "input":
                    torch_texts = texts
                gen.close()
                rec = {"batch_size": b, "order": order, "rows": len(chats), "tokens": tokens,
                       "wall_s": round(wall, 2), "rows_per_s": round(len(chats) / wall, 3),
                       "tok_per_s": round(tokens / wall, 1)}
                results.append(rec)
                print(f"embedded batch {b:>3}, {order:>7} order: {rec['rows_per_s']:.2f} rows/s, "
                      f"{rec['tok_per_s']:.1f} generated tok/s ({tokens} tokens in {wall:.1f} s)", flush=True)
    if args.concurrency:
        results += bench_server(model, tok, chats, args)
    if args.llamacpp_servers:
        results += bench_llamacpp(args.model, chats, args, torch_texts)
    if args.overhead_requests:
        results.append(bench_overhead(args.overhead_requests))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
