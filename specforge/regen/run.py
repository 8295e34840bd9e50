"""Regenerate the assistant turns of a conversations file with the target (the seed's step 2).

Every row's user turns are re-answered in order: turn k's request carries the system prompt, the user turns
before it and the *regenerated* answers of those turns (never the data set's original answers). The output
rows keep the input's ``id`` and are in the conversations format build-cache reads; an answer cut by
``--max-tokens`` is kept and marked ``"truncated": true``.

Generation goes through a backend with ``async chat(messages, max_tokens, temperature, top_p, seed) ->
Completion``: the embedded batched engine (default) or OpenAI-compatible servers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specforge.data.template import ROLES
from specforge.errors import SpecforgeError
from specforge.regen.embedded import FatalBackendError, GenerationError
from specforge.regen.store import ShardStore

logger = logging.getLogger(__name__)


@dataclass
class RegenOptions:
    """Everything `specforge regenerate` takes (see its --help)."""

    model_name: str
    raw_data_file: str
    output_dir: str
    servers: list[str] = field(default_factory=list)
    max_concurrency: int | None = None
    num_per_shard: int = 1000
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    system_prompt: str | None = None
    num_samples: int = 1
    resume: bool = False
    timeout: float = 600.0
    max_retries: int = 3
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    progress: bool = True
    threads: int | None = None


@dataclass
class InputRow:
    lineno: int
    id: str
    conversations: list[dict]


@dataclass
class RegenSummary:
    ok: int = 0
    error: int = 0
    skipped_done: int = 0
    skipped_no_user: int = 0
    tokens: int = 0
    truncated_turns: int = 0
    wall_s: float = 0.0
    error_reasons: dict = field(default_factory=dict)

    def line(self, output_dir: str) -> str:
        rate = f"{self.ok / self.wall_s:.2f} rows/s, {self.tokens / self.wall_s:.1f} tok/s" if self.wall_s else ""
        skipped = self.skipped_done + self.skipped_no_user
        parts = [f"{self.ok} ok", f"{self.error} error", f"{skipped} skipped"]
        if skipped:
            parts[-1] += f" ({self.skipped_done} already done, {self.skipped_no_user} without a user turn)"
        why = "; ".join(f"{n}x {r}" for r, n in sorted(self.error_reasons.items(), key=lambda x: -x[1])[:3])
        return (f"regenerate: {', '.join(parts)}; {self.tokens} tokens generated in {self.wall_s:.1f} s"
                f"{' (' + rate + ')' if rate else ''}; {self.truncated_turns} answers cut by --max-tokens; "
                f"output in {output_dir}" + (f"; errors: {why} (see error.jsonl)" if why else ""))


MAX_REPORTED = 5


def load_input(path: str | os.PathLike) -> list[InputRow]:
    """Read and check every row first, so bad input fails before any generation, with line numbers."""
    path = Path(path)
    if not path.is_file():
        raise SpecforgeError(f"--raw-data-file {path}: file not found; pass the conversations JSONL that "
                             "prepare-data wrote.")
    rows: list[InputRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            why = None
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec, why = None, f"malformed JSON ({e.msg})"
            if why is None:
                why = _check_row(rec)
            if why is None:
                rid = str(rec.get("id", f"line{lineno}"))
                if rid in seen:
                    why = f"duplicate id {rid!r} (first on line {seen[rid]})"
                else:
                    seen[rid] = lineno
            if why is not None:
                problems.append(f"line {lineno}: {why}")
                continue
            rows.append(InputRow(lineno, rid, rec["conversations"]))
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise SpecforgeError(
            f"{path}: {len(problems)} bad row(s) -- {'; '.join(problems[:MAX_REPORTED])}{more}. Rows must be "
            '{"id", "conversations": [{"role": "system|user|assistant", "content": "..."}]}; fix or remove them.')
    if not rows:
        raise SpecforgeError(f"{path}: no rows; pass a non-empty conversations JSONL (prepare-data's output).")
    return rows


def _check_row(rec) -> str | None:
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    conv = rec.get("conversations")
    if not isinstance(conv, list):
        return "no 'conversations' list"
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            return f"turn {i} needs a role (system/user/assistant) and a text content"
    return None


def _seed(opts: RegenOptions, key: str, turn: int) -> int:
    """A per-(row, sample, turn) sampling seed: reproducible whatever the batching or order."""
    return zlib.crc32(f"{opts.seed}:{key}:{turn}".encode())


async def regenerate_row(backend, row: InputRow, sample: int | None, opts: RegenOptions, stats: RegenSummary) -> dict:
    """Re-answer every user turn of one row; returns the output row."""
    key = row.id if sample is None else f"{row.id}#{sample}"
    msgs: list[dict] = []
    if opts.system_prompt is not None:
        msgs.append({"role": "system", "content": opts.system_prompt})
    turn = 0
    for t in row.conversations:
        if t["role"] == "system":
            if opts.system_prompt is None:
                msgs.append({"role": "system", "content": t["content"]})
            continue
        if t["role"] != "user":
            continue  # the data set's own answers are replaced
        msgs.append({"role": "user", "content": t["content"]})
        comp = await backend.chat([{"role": m["role"], "content": m["content"]} for m in msgs], opts.max_tokens,
                                  opts.temperature, opts.top_p, _seed(opts, key, turn))
        answer = {"role": "assistant", "content": comp.text}
        if comp.finish_reason == "length":
            answer["truncated"] = True
            stats.truncated_turns += 1
        msgs.append(answer)
        stats.tokens += comp.completion_tokens
        turn += 1
    out: dict[str, Any] = {"id": row.id, "conversations": msgs}
    if sample is not None:
        out["sample"] = sample
    return out


def _manifest(opts: RegenOptions) -> dict:
    return {"model": opts.model_name, "raw_data_file": str(Path(opts.raw_data_file).resolve()),
            "max_tokens": opts.max_tokens, "temperature": opts.temperature, "top_p": opts.top_p,
            "system_prompt": opts.system_prompt, "num_samples": opts.num_samples, "seed": opts.seed}


def check_options(opts: RegenOptions) -> None:
    """One clear line for each impossible setting."""
    if opts.max_tokens < 1:
        raise SpecforgeError(f"--max-tokens must be >= 1 (got {opts.max_tokens}).")
    if opts.temperature < 0:
        raise SpecforgeError(f"--temperature must be >= 0 (got {opts.temperature}).")
    if not 0 < opts.top_p <= 1:
        raise SpecforgeError(f"--top-p must be in (0, 1] (got {opts.top_p}).")
    if opts.num_samples < 1:
        raise SpecforgeError(f"--num-samples must be >= 1 (got {opts.num_samples}).")
    if opts.batch_size < 1:
        raise SpecforgeError(f"--batch-size must be >= 1 (got {opts.batch_size}).")
    if opts.max_concurrency is not None and opts.max_concurrency < 1:
        raise SpecforgeError(f"--max-concurrency must be >= 1 (got {opts.max_concurrency}).")
    if opts.num_per_shard < 1:
        raise SpecforgeError(f"--num-per-shard must be >= 1 (got {opts.num_per_shard}).")
    if opts.threads is not None and opts.threads < 1:
        raise SpecforgeError(f"--threads must be >= 1 (got {opts.threads}).")


def plan(opts: RegenOptions, rows: list[InputRow], store: ShardStore, stats: RegenSummary):
    """The (row, sample) pairs still to do, in input order."""
    todo = []
    for row in rows:
        if not any(t["role"] == "user" for t in row.conversations):
            stats.skipped_no_user += opts.num_samples
            continue
        for s in range(opts.num_samples):
            sample = None if opts.num_samples == 1 else s
            key = row.id if sample is None else f"{row.id}#{sample}"
            if key in store.done:
                stats.skipped_done += 1
            else:
                todo.append((row, sample, key))
    return todo


async def drive(backend, todo, store: ShardStore, opts: RegenOptions, stats: RegenSummary, concurrency: int) -> None:
    """Run the rows through ``backend`` with at most ``concurrency`` rows in flight."""
    from tqdm import tqdm

    it = iter(todo)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="regenerate", unit="row", file=sys.stderr, dynamic_ncols=True,
               disable=not opts.progress, smoothing=0.05)
    last = [0.0]

    def tick():
        bar.update(1)
        now = time.perf_counter()
        if now - last[0] > 0.5:
            last[0] = now
            bar.set_postfix_str(f"{stats.tokens / max(now - t0, 1e-9):.1f} tok/s, {stats.error} err", refresh=False)

    async def worker():
        for row, sample, key in it:
            try:
                out = await regenerate_row(backend, row, sample, opts, stats)
            except GenerationError as e:
                reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                rec = {"id": row.id, "line": row.lineno, "error": reason}
                if sample is not None:
                    rec["sample"] = sample
                store.write_error(key, rec)
                stats.error += 1
                short = reason.split(":")[0][:80]
                stats.error_reasons[short] = stats.error_reasons.get(short, 0) + 1
            else:
                store.write_row(out)
                stats.ok += 1
            tick()

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(todo))))))
    finally:
        bar.close()


async def _serve_rows(backend, todo, store, opts, stats, concurrency) -> None:
    """Start the backend (servers are probed here), run the rows, close its connections in this loop."""
    if hasattr(backend, "astart"):
        await backend.astart()
    try:
        await drive(backend, todo, store, opts, stats, concurrency)
    finally:
        if hasattr(backend, "aclose"):
            await backend.aclose()


def regenerate(opts: RegenOptions, backend=None) -> RegenSummary:
    """Run a regeneration (embedded unless ``opts.servers``); returns the summary. ``backend`` overrides."""
    check_options(opts)
    rows = load_input(opts.raw_data_file)
    store = ShardStore(opts.output_dir, opts.num_per_shard, _manifest(opts), opts.resume)
    stats = RegenSummary()
    todo = plan(opts, rows, store, stats)
    if store.prev_errors:
        logger.info("--resume: %d rows already done, retrying %d that failed before",
                    stats.skipped_done, sum(1 for _, _, k in todo if k in store.prev_errors))
    elif stats.skipped_done:
        logger.info("--resume: %d rows already done, %d to go", stats.skipped_done, len(todo))
    own = backend is None
    complete = False
    t0 = time.perf_counter()
    try:
        if todo:
            if own:
                backend = make_backend(opts)
            t0 = time.perf_counter()  # generation time only, not loading the model
            concurrency = opts.max_concurrency or (2 * opts.batch_size if not opts.servers else 32)
            asyncio.run(_serve_rows(backend, todo, store, opts, stats, concurrency))
        complete = True
    except FatalBackendError as e:
        raise SpecforgeError(f"regeneration stopped: {e}; completed rows are kept, rerun with --resume.") from None
    finally:
        stats.wall_s = time.perf_counter() - t0
        store.close(complete=complete)
        if own and backend is not None:
            backend.close()
    return stats


def make_backend(opts: RegenOptions):
    """The embedded generator, or the OpenAI-compatible client when servers are given."""
    if opts.servers:
        from specforge.regen.client import ServerPool

        return ServerPool.connect(opts)
    from specforge.regen.embedded import EmbeddedGenerator

    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    return EmbeddedGenerator.load(opts.model_name, device=opts.device, dtype=opts.dtype, batch_size=opts.batch_size)
