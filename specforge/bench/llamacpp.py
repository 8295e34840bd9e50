"""llama.cpp as a serving engine for the benchmark: the target GGUF (+ an EAGLE-3 draft GGUF) in-process.

The engine is the ``xllamacpp`` wheel (llama.cpp's server compiled as a Python extension, the optional
extra ``pip install specforge[llamacpp]``). :class:`LlamaCppServer` starts one server per speculative
configuration - none, llama.cpp's n-gram speculation (``ngram-simple``) or EAGLE-3 with a draft GGUF and
a maximum draft length - and stops it on ``close()``. Prompts go in as token ids (the benchmark builds
them with the HF tokenizer's chat template, so both engines see the same tokens) and come back as token
ids. llama.cpp reports per request how many tokens were drafted and accepted; τ is derived from those.

Threads: llama.cpp runs with ``threads`` compute threads (default 1). On 2-vCPU machines 2 threads make
llama.cpp collapse (its threads spin-wait against the HTTP thread and other processes); 1 is fastest.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass

from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'specforge[llamacpp]'"
METHODS = ("none", "ngram", "eagle3")


def import_xllamacpp():
    """The ``xllamacpp`` module, or one clear error naming the extra to install."""
    try:
        import xllamacpp
    except ImportError:
        raise SpecforgeError(f"the llama.cpp engine needs the xllamacpp wheel: {INSTALL_HINT}") from None
    if not hasattr(xllamacpp.common_speculative_type, "COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3"):
        raise SpecforgeError("this xllamacpp has no EAGLE-3 speculative type; upgrade it: "
                             f"{INSTALL_HINT} --upgrade")
    return xllamacpp


@dataclass(frozen=True)
class EngineSpec:
    """One llama.cpp configuration: ``method`` none|ngram|eagle3, max draft length, draft GGUF (eagle3)."""

    method: str = "none"
    n_draft: int = 0
    draft_gguf: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise SpecforgeError(f"llama.cpp speculation '{self.method}': use one of {', '.join(METHODS)}.")
        if self.method != "none" and self.n_draft < 1:
            raise SpecforgeError(f"llama.cpp {self.method} speculation needs a draft length >= 1.")
        if self.method == "eagle3" and not self.draft_gguf:
            raise SpecforgeError("llama.cpp EAGLE-3 speculation needs a draft GGUF (specforge export --to gguf).")


@dataclass
class Completion:
    """One request: text (+ token ids when asked), wall time, llama.cpp's prompt/predicted/drafted/accepted."""

    text: str
    tokens: list[int] | None
    wall_s: float
    prompt_n: int
    predicted_n: int
    drafted: int
    accepted: int

    @property
    def verifications(self) -> int:
        """Target decode steps after the prefill: each emits its accepted drafts + 1 token."""
        return max(0, self.predicted_n - 1 - self.accepted)


class LlamaCppServer:
    """An in-process llama.cpp server for one :class:`EngineSpec`; use as a context manager."""

    def __init__(self, target_gguf: str, spec: EngineSpec = EngineSpec(), threads: int = 1, n_ctx: int = 4096,
                 verbose: bool = False, parallel: int = 1, port: int | None = None):
        """``parallel`` slots share ``n_ctx`` (each gets ``n_ctx // parallel``, batched together); with ``port``
        the server also answers HTTP (OpenAI-compatible, ``/v1/chat/completions``) at ``127.0.0.1:port``."""
        x = import_xllamacpp()
        self.spec = spec
        p = x.CommonParams()
        p.model.path = str(target_gguf)
        p.n_ctx, p.n_parallel, p.n_threads_http = n_ctx, parallel, 1
        if port is not None:
            p.hostnames, p.port, p.n_threads_http = ["127.0.0.1"], int(port), 2
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
        p.cache_prompt = False
        if not verbose:
            p.verbosity = 0
        T = x.common_speculative_type
        if spec.method == "ngram":
            p.speculative.types = [T.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
            p.speculative.ngram_simple.size_m = spec.n_draft
            p.speculative.draft.n_max = spec.n_draft
        elif spec.method == "eagle3":
            d = p.speculative.draft
            p.speculative.types = [T.COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3]
            d.mparams.path = str(spec.draft_gguf)
            d.n_max, d.n_min, d.p_min = spec.n_draft, 0, 0.0  # always draft the full length (a fixed chain)
            d.cpuparams.n_threads = d.cpuparams_batch.n_threads = threads
        t0 = time.perf_counter()
        try:
            self._server = x.Server(p)
        except RuntimeError as e:
            raise SpecforgeError(f"llama.cpp did not start with target {target_gguf}"
                                 f"{' and draft ' + str(spec.draft_gguf) if spec.draft_gguf else ''}: {e} "
                                 "(its log above says why)") from None
        self.address = f"127.0.0.1:{port}" if port is not None else None
        logger.info("llama.cpp %s (draft %d) started in %.1f s", spec.method, spec.n_draft, time.perf_counter() - t0)

    def complete(self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 token_ids: bool = False) -> Completion:
        """Generate up to ``max_new_tokens`` after ``prompt`` (token ids); greedy at temperature 0.

        ``token_ids`` also returns the generated ids (through llama.cpp's top-1 logprobs, which the OpenAI-style
        response of the in-process server carries; it costs a softmax per token, so timing runs leave it off).
        """
        if self._server is None:
            raise SpecforgeError("llama.cpp server already stopped.")
        req = {"prompt": list(map(int, prompt)), "n_predict": int(max_new_tokens), "temperature": float(temperature),
               "seed": int(seed), "cache_prompt": False, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        if token_ids:
            req["logprobs"] = 1
        t0 = time.perf_counter()
        r = self._server.handle_completions(req)
        wall = time.perf_counter() - t0
        try:
            choice, t = r["choices"][0], r.get("timings") or {}
            ids = [int(e["id"]) for e in choice["logprobs"]["content"]] if token_ids else None
        except (TypeError, KeyError, IndexError):
            raise SpecforgeError(f"llama.cpp request failed: {str(r)[:300]}") from None
        return Completion(choice.get("text", ""), ids, wall, int(t.get("prompt_n", len(prompt))),
                          int(t.get("predicted_n", 0)), int(t.get("draft_n", 0)), int(t.get("draft_n_accepted", 0)))

    def close(self) -> None:
        """Stop the server (llama.cpp's main loop exits when the object is freed)."""
        if getattr(self, "_server", None) is not None:
            self._server = None
            gc.collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tau(completions: list[Completion]) -> float | None:
    """τ = tokens per target verification (bonus token included), from llama.cpp's accepted counts."""
    steps = sum(c.verifications for c in completions)
    emitted = sum(max(0, c.predicted_n - 1) for c in completions)
    return emitted / steps if steps else None


# ----------------------------------------------------------------------------------------- the benchmark

def _draft_gguf(path: str | None, model_path: str, target_gguf: str, tmpdir: str) -> str | None:
    """The draft as a GGUF file: a ``.gguf`` as is, a checkpoint/export dir exported into ``tmpdir``."""
    import os

    if not path:
        return None
    if path.startswith("oracle"):
        raise SpecforgeError("--speculative-draft-model-path oracle is built-in-decoder only; llama.cpp needs a "
                             "draft checkpoint dir or a .gguf file.")
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise SpecforgeError(f"--speculative-draft-model-path {path}: no such file.")
        return path
    from specforge.export import export_gguf

    if not os.path.isdir(path):
        raise SpecforgeError(f"--speculative-draft-model-path {path}: not a directory or .gguf file.")
    return str(export_gguf(path, os.path.join(tmpdir, "draft.gguf"), model_path, target_gguf))


def _methods(opts, draft: str | None) -> list[tuple[str, dict, EngineSpec]]:
    """(method name, config dict, engine spec) in run order: vanilla, EAGLE-3 configs, n-gram."""
    out = [("vanilla", {"batch_size": 1, "num_steps": 0, "topk": 0, "num_verify_tokens": 0}, EngineSpec())]
    for b, s, k, t in opts.configs:
        if b != 1 or k != 1:
            raise SpecforgeError(f"--config-list {b},{s},{k},{t}: llama.cpp drafts one chain for one request "
                                 "(batch_size 1, topk 1); use e.g. 1,4,1,5.")
        if s == 0:
            continue  # vanilla runs anyway
        if not draft:
            raise SpecforgeError("configs with num_steps > 0 need --speculative-draft-model-path (a draft "
                                 "checkpoint dir or a .gguf file).")
        out.append(("eagle3", {"batch_size": 1, "num_steps": s, "topk": 1, "num_verify_tokens": s + 1},
                    EngineSpec("eagle3", s, draft)))
    for name in opts.baselines:
        if name == "prompt_lookup":
            n = opts.prompt_lookup_num_tokens
            out.append(("ngram", {"batch_size": 1, "num_steps": n, "topk": 1, "num_verify_tokens": n + 1},
                        EngineSpec("ngram", n)))
        elif name != "vanilla":
            raise SpecforgeError(f"baseline '{name}' is not available with --engine llamacpp (use prompt_lookup: "
                                 "llama.cpp's n-gram speculation).")
    return out


def _answer_all(srv: LlamaCppServer, samples, tokenizer, system_prompt, max_new_tokens: int, temperature: float,
                seed: int) -> list[Completion]:
    """Every turn of every sample, each turn seeing this engine's own previous answers (as the runner does)."""
    from specforge.bench.runner import chat_ids

    done = []
    for s in samples:
        conv = [{"role": "system", "content": system_prompt}] if system_prompt else []
        for turn in s.turns:
            conv.append({"role": "user", "content": turn})
            c = srv.complete(chat_ids(tokenizer, conv), max_new_tokens, temperature, seed)
            conv.append({"role": "assistant", "content": c.text})
            done.append(c)
    return done


def run_llamacpp_bench(opts, target_gguf: str | None = None, threads: int = 1) -> list[dict]:
    """``specforge bench --engine llamacpp``: the same records, table and plots as the built-in decoder.

    ``opts`` is a :class:`specforge.bench.runner.BenchOptions`; τ comes from llama.cpp's drafted/accepted
    counts (no per-position histogram: llama.cpp reports totals only).
    """
    import tempfile

    from specforge.bench.datasets import load_benchmark, parse_benchmark
    from specforge.bench.report import RecordWriter, print_table, write_plots
    from specforge.export.gguf import target_gguf_path
    from specforge.modeling.loading import load_tokenizer

    for b in opts.benchmarks:
        parse_benchmark(b)
    if threads < 1:
        raise SpecforgeError("--llamacpp-threads must be >= 1.")
    if (opts.draft_path or "").startswith("oracle"):
        _draft_gguf(opts.draft_path, "", "", "")  # raises: the oracle is built-in only
    _methods(opts, opts.draft_path)  # bad configs fail before anything is loaded
    import_xllamacpp()
    gguf_path = str(target_gguf_path(opts.model_path, target_gguf))
    tokenizer = load_tokenizer(opts.model_path)
    writer = RecordWriter(opts.output)
    sets = [load_benchmark(b) for b in opts.benchmarks]
    vanilla: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="specforge-llamacpp-") as tmp:
        draft = _draft_gguf(opts.draft_path, opts.model_path, gguf_path, tmp)
        methods = _methods(opts, draft)
        common = {"engine": "llamacpp", "model": gguf_path, "draft": opts.draft_path, "temperature": opts.temperature,
                  "max_new_tokens": opts.max_new_tokens, "device": "cpu", "dtype": "gguf", "threads": threads}
        try:
            for name, cfg, espec in methods:
                with LlamaCppServer(gguf_path, espec, threads=threads) as srv:
                    srv.complete(chat_ids_hello(tokenizer), 4)  # untimed warm-up
                    for bench, samples in sets:
                        cs = _answer_all(srv, samples, tokenizer, opts.system_prompt, opts.max_new_tokens,
                                         opts.temperature, opts.seed)
                        writer.add(_record(name, cfg, bench, samples, cs, vanilla, common))
        finally:
            if writer.records:
                print_table(writer.records)
                if opts.plots:
                    write_plots(writer.records, opts.output)
                logger.info("wrote %d records to %s", len(writer.records), opts.output)
    return writer.records


def chat_ids_hello(tokenizer) -> list[int]:
    from specforge.bench.runner import chat_ids

    return chat_ids(tokenizer, [{"role": "user", "content": "Hello"}])


def _record(name: str, cfg: dict, bench: str, samples, cs: list[Completion], vanilla: dict, common: dict) -> dict:
    new = sum(c.predicted_n for c in cs)
    wall = sum(c.wall_s for c in cs)
    drafted, accepted = sum(c.drafted for c in cs), sum(c.accepted for c in cs)
    spec = name != "vanilla"
    if not spec:
        vanilla[bench] = (wall, new / wall if wall > 0 else 0.0)
    base_wall, base_tps = vanilla.get(bench, (None, None))
    rec = {
        "benchmark": bench, "num_samples": len(samples), "num_turns": len(cs), "method": name, "config": cfg,
        "config_str": ",".join(str(cfg[k]) for k in ("batch_size", "num_steps", "topk", "num_verify_tokens")),
        "accept_length": tau(cs) if spec else None, "acceptance_rates": None, "accept_histogram": None,
        "drafted_tokens": drafted if spec else None, "accepted_tokens": accepted if spec else None,
        "draft_acceptance": (accepted / drafted if drafted else 0.0) if spec else None,
        "verifications": sum(c.verifications for c in cs) if spec else None,
        "new_tokens": new, "prompt_tokens": sum(c.prompt_n for c in cs),
        "tokens_per_s": new / wall if wall > 0 else 0.0, "wall_time_s": wall,
        "speedup": base_wall / wall if spec and base_wall and wall > 0 else None,
        **common,
    }
    rec["speedup_tokens_per_s"] = rec["tokens_per_s"] / base_tps if spec and base_tps else None
    logger.info("llama.cpp %s %s %s: %.1f tok/s%s%s", bench, name, rec["config_str"], rec["tokens_per_s"],
                f", tau {rec['accept_length']:.2f}" if rec["accept_length"] else "",
                f", speed-up {rec['speedup']:.2f}x" if spec and rec["speedup"] else "")
    return rec
