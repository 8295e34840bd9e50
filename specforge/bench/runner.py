"""The speed-up benchmark: every (config, benchmark) on the built-in decoder next to the HF baselines.

For each benchmark the vanilla baseline runs first (per batch size needed), then each
``batch,steps,topk,tokens`` config, then prompt lookup and assisted generation (batch 1); every method
sees the same prompts and max new tokens, and multi-turn sets (MT-bench) feed each method its own
previous answers. One JSONL record is written per (method/config, benchmark) as soon as it finishes.
With ``interleave`` every method runs on one block of conversations (the batch sizes' lcm) before any runs
on the next, so a machine whose speed drifts during the run (shared or throttled CPUs) slows every method alike
and the speed-ups stay comparable; the records are then written when the benchmark ends.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field

import torch

from specforge.bench.datasets import Sample, load_benchmark, parse_benchmark
from specforge.bench.methods import HFGenerateMethod, ShadowDrafter, SpecMethod
from specforge.bench.report import RecordWriter, print_table, write_plots
from specforge.errors import SpecforgeError
from specforge.fileio import check_output_file
from specforge.inference.decoder import DecodeStats, SpecConfig
from specforge.inference.drafters import Eagle3Drafter, LookupDrafter, OracleDrafter

logger = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    """Everything ``specforge bench`` needs (see :mod:`specforge.cli.bench` for the flags)."""

    model_path: str
    draft_path: str | None
    configs: list[tuple[int, int, int, int]]
    benchmarks: list[str]
    output: str
    temperature: float = 0.0
    max_new_tokens: int = 256
    system_prompt: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    assistant_model: str | None = None
    baselines: list[str] = field(default_factory=lambda: ["prompt_lookup"])
    prompt_lookup_num_tokens: int = 10
    seed: int = 0
    plots: bool = True
    hybrid_lookup: bool = False  # also run each speculative config as eagle3+lookup (LookupDrafter)
    min_draft_prob: float = 0.0  # dynamic draft depth (SpecConfig.min_draft_prob)
    interleave: bool = False  # run every method block by block (drift-robust ratios) instead of one after another


def max_verify_tokens(num_steps: int, topk: int) -> int:
    """Most tokens one verification can hold: the root + every candidate an EAGLE-2 tree of ``num_steps``
    levels drafts (``topk`` at depth 1, then ``topk**2`` per level: the topk children of the topk best)."""
    return 1 + topk + (num_steps - 1) * topk * topk


def parse_config(text: str) -> tuple[int, int, int, int]:
    """``"batch,steps,topk,tokens"`` -> 4 ints (one-line error otherwise).

    Steps 0 is plain decoding whatever topk/tokens say (bench labels its vanilla rows ``B,0,0,0``); with
    steps > 0 the tokens must fit the tree: ``2 <= tokens <= max_verify_tokens(steps, topk)``.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[0] < 1 or min(vals[1:]) < 0 or (vals[1] > 0 and vals[2] < 1):
        raise SpecforgeError(
            f"bad --config-list entry '{text}': use batch_size,num_steps,topk,num_verify_tokens "
            "with batch >= 1, steps >= 0, topk >= 1, tokens >= 1 (e.g. 1,3,1,4; steps 0 = no speculation)."
        )
    _, steps, topk, tokens = vals
    if steps > 0 and not 2 <= tokens <= max_verify_tokens(steps, topk):
        hi = max_verify_tokens(steps, topk)
        shape = f"a {steps}-step chain" if topk == 1 else f"a {steps}-step top-{topk} tree"
        raise SpecforgeError(
            f"bad --config-list entry '{text}': {shape} verifies 2..{hi} tokens (the last emitted token + "
            f"up to {hi - 1} drafts), got {tokens}; use num_verify_tokens in 2..{hi}."
        )
    return vals  # type: ignore[return-value]


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat ready for the assistant's answer (the tokenizer's chat template)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tokenizer(text)["input_ids"]


def run_conversations(method, samples: list[Sample], tokenizer, system_prompt: str | None, desc: str,
                      refs: dict | None = None, bar=None) -> DecodeStats:
    """Answer every turn of every sample with ``method`` (batched); returns the merged stats.

    refs, when given, receives ``tuple(prompt ids) -> generated ids`` (the oracle draft's references).
    bar, when given, is a caller's tqdm bar advanced by one per answered turn (else this call shows its own).
    """
    from contextlib import nullcontext

    from tqdm import tqdm

    convs = [[{"role": "system", "content": system_prompt}] if system_prompt else [] for _ in samples]
    total = DecodeStats(num_steps=getattr(getattr(method, "cfg", None), "num_steps", 0))
    n_calls = sum(len(s.turns) for s in samples)
    with (tqdm(total=n_calls, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True) if bar is None
          else nullcontext(bar)) as pbar:
        for turn in range(max(len(s.turns) for s in samples)):
            idx = [i for i, s in enumerate(samples) if len(s.turns) > turn]
            for i in idx:
                convs[i].append({"role": "user", "content": samples[i].turns[turn]})
            prompts = [chat_ids(tokenizer, convs[i]) for i in idx]
            for lo in range(0, len(idx), method.batch_size):
                chunk = list(range(lo, min(lo + method.batch_size, len(idx))))
                outs, st = method.generate([prompts[j] for j in chunk])
                total.merge(st)
                for j, out in zip(chunk, outs):
                    if refs is not None:
                        refs[tuple(prompts[j])] = out
                    convs[idx[j]].append({"role": "assistant",
                                          "content": tokenizer.decode(out, skip_special_tokens=True)})
                pbar.update(len(chunk))
    return total


def _warmup(method, tokenizer) -> None:
    """One short untimed call so first-call costs (allocator, kernels) do not land in a measurement."""
    keep = method.max_new_tokens
    method.max_new_tokens = 4
    try:
        method.generate([chat_ids(tokenizer, [{"role": "user", "content": "Hello"}])] * method.batch_size)
    finally:
        method.max_new_tokens = keep


def _eos_ids(target, tokenizer) -> set[int]:
    eos = getattr(target.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _load_draft(opts: BenchOptions, target, device, dtype):
    """-> (make_drafter(prompts, refs) or None, aux layer ids or None, description)."""
    from specforge.eagle3.config import VLLM_IDS_FIELD, aux_layer_ids

    path = opts.draft_path
    cfg = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    vocab, layers = cfg.vocab_size, cfg.num_hidden_layers
    if not path:
        return None, None, None
    eagle = None
    real = path[len("oracle:"):] if path.startswith("oracle:") else (None if path == "oracle" else path)
    aux = None
    if real:
        from specforge.export import load_draft
        from specforge.modeling.auto import check_draft_target_compat
        from specforge.shipped_drafts import resolve_draft

        real = resolve_draft(real, "--speculative-draft-model-path")
        if not os.path.isdir(real):
            raise SpecforgeError(f"--speculative-draft-model-path {real}: not a directory; pass a checkpoint "
                                 "(OUTPUT_DIR/epoch_<i>), an export dir, or 'oracle'.")
        # Any layout: training checkpoint, or an hf / sglang / vllm export (speculators included).
        eagle, draft_aux = load_draft(real)
        check_draft_target_compat(eagle.config, target.config)
        eagle.load_embedding(target.get_input_embeddings().weight)
        eagle.to(device=device, dtype=dtype).eval().requires_grad_(False)
        # draft_aux: HF hidden_states indices (= vLLM's top-level field); the one function decides
        aux = aux_layer_ids(layers, {VLLM_IDS_FIELD: draft_aux} if draft_aux else None)
    if path.startswith("oracle"):
        if opts.temperature > 0:
            raise SpecforgeError("--speculative-draft-model-path oracle needs --temperature 0 (it proposes the "
                                 "target's greedy output).")

        def make(prompts, refs):
            oracle = OracleDrafter([list(p) + list(refs.get(tuple(p), [])) for p in prompts], vocab)
            return oracle if eagle is None else ShadowDrafter(oracle, Eagle3Drafter(eagle))

        return make, aux, path
    return (lambda prompts, refs: Eagle3Drafter(eagle)), aux, path


def step_times(st: DecodeStats, vanilla: DecodeStats, batch_size: int, engine: bool, spec: bool) -> dict:
    """Where a config's time goes, in ms (None where it does not apply).

    ``t_target_ms``: one plain decoding step of the vanilla baseline at this batch size (its wall time per
    new token of a row, prefill included); ``t_verify_ms``: one verification forward of the built-in
    decoder (for steps 0, its plain decoding forward); ``t_draft_ms``: the draft's work per verification
    (all ``num_steps`` draft forwards of the tree plus committing the accepted tokens). A speculative
    config beats vanilla when ``τ · t_target > t_verify + t_draft + overhead``; ``ideal_speedup`` is
    ``τ · t_target / (t_verify + t_draft)`` with τ the emitted tokens per verification.
    """
    rows_tokens = vanilla.new_tokens / max(1, batch_size)
    t_target = 1000 * vanilla.wall_s / rows_tokens if rows_tokens > 0 else None
    calls = st.verify_calls if engine else 0
    t_verify = 1000 * st.verify_s / calls if calls else None
    t_draft = 1000 * st.draft_step_s / calls if spec and calls else None
    ideal = None
    if spec and t_target and t_verify is not None and t_draft is not None and st.accept_lengths:
        tau = sum(st.accept_lengths) / len(st.accept_lengths)
        ideal = tau * t_target / (t_verify + t_draft)
    return {"t_target_ms": t_target, "t_verify_ms": t_verify, "t_draft_ms": t_draft, "ideal_speedup": ideal}


def run_bench(opts: BenchOptions) -> list[dict]:
    """Run every benchmark x method; returns the records (also written to ``opts.output``)."""
    from specforge.inference.precision import decode_dtype
    from specforge.modeling.loading import (
        load_target_model,
        load_tokenizer,
        resolve_device,
    )

    for spec in opts.benchmarks:
        parse_benchmark(spec)  # fail fast on a typo, before loading models
    check_output_file(opts.output, "--output")  # and on a place that cannot be written, before measuring
    if any(c[1] > 0 for c in opts.configs) and not opts.draft_path:
        raise SpecforgeError("configs with num_steps > 0 need --speculative-draft-model-path "
                             "(a draft checkpoint dir, or 'oracle' to measure the decoder's ceiling).")
    device = resolve_device(opts.device)
    dtype = decode_dtype(opts.dtype, device)
    torch.manual_seed(opts.seed)
    tokenizer = load_tokenizer(opts.model_path)
    target = load_target_model(opts.model_path, dtype=dtype, device=device)
    make_drafter, aux_ids, draft_desc = _load_draft(opts, target, device, dtype)
    assistant = load_target_model(opts.assistant_model, dtype=dtype, device=device) if opts.assistant_model else None
    eos = _eos_ids(target, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    writer = RecordWriter(opts.output)
    common = {"model": opts.model_path, "draft": draft_desc, "temperature": opts.temperature,
              "max_new_tokens": opts.max_new_tokens, "device": device, "dtype": str(dtype).replace("torch.", "")}
    refs: dict = {}
    warmed: set = set()

    def hf(name, label, bsz, extra=None):
        return HFGenerateMethod(name, label, target, bsz, opts.max_new_tokens, opts.temperature, eos, pad, extra)

    def run(method, samples, desc, bar=None):
        key = (method.name, method.label, method.batch_size)
        if key not in warmed:
            _warmup(method, tokenizer)
            warmed.add(key)
        return run_conversations(method, samples, tokenizer, opts.system_prompt, desc,
                                 refs if method.name == "vanilla" else None, bar)

    def record(method, bench, samples, st: DecodeStats, vanilla: dict):
        base = None if method.name == "vanilla" else vanilla.get(method.batch_size)
        engine = isinstance(method, SpecMethod)
        spec = engine and method.cfg.num_steps > 0
        timing = step_times(st, base if base is not None else st, method.batch_size, engine, spec)
        rec = {
            "benchmark": bench, "num_samples": len(samples), "num_turns": sum(len(s.turns) for s in samples),
            "method": method.name, "config": method.config,
            "config_str": ",".join(str(method.config[k]) for k in ("batch_size", "num_steps", "topk",
                                                                   "num_verify_tokens")),
            "accept_length": st.tau if spec else None,
            "acceptance_rates": st.acceptance_rates() if spec else None,
            "accept_histogram": st.histogram() if spec else None,
            "verify_steps": st.verify_calls if engine else None,
            "verifications": len(st.accept_lengths) if engine else None,
            "lookup_share": st.lookup_steps / st.verify_calls if spec and st.verify_calls else None,
            "new_tokens": st.new_tokens, "prompt_tokens": st.prompt_tokens,
            "tokens_per_s": st.tokens_per_s, "wall_time_s": st.wall_s,
            "target_time_s": st.target_s if engine else None,
            "draft_time_s": st.draft_s if spec else None,
            **timing,
            "speedup": (base.wall_s / st.wall_s) if base is not None and st.wall_s > 0 else None,
            "speedup_tokens_per_s": (st.tokens_per_s / base.tokens_per_s) if base is not None and
            base.tokens_per_s > 0 else None,
            "interleave": opts.interleave,
            **common,
        }
        writer.add(rec)
        logger.info("%s %s %s: %.1f tok/s%s%s", bench, method.name, rec["config_str"], st.tokens_per_s,
                    f", tau {st.tau:.2f}" if spec else "",
                    f", speed-up {rec['speedup']:.2f}x" if rec["speedup"] is not None else "")

    def methods_for(vanilla_sizes):
        """Every method of one benchmark, in run order: vanilla per batch size, configs, baselines."""
        ms = [hf("vanilla", "greedy" if opts.temperature <= 0 else "sample", bsz) for bsz in vanilla_sizes]
        for b, s, k, t in opts.configs:
            cfg = SpecConfig(s, k, t, temperature=opts.temperature, max_new_tokens=opts.max_new_tokens,
                             eos_token_ids=tuple(sorted(eos)), seed=opts.seed, min_draft_prob=opts.min_draft_prob)
            make = (lambda prompts, _m=make_drafter: _m(prompts, refs)) if make_drafter else (lambda p: None)
            ms.append(SpecMethod(target, make, aux_ids, b, cfg, f"{b},{s},{k},{t}"))
            if opts.hybrid_lookup and s > 0:
                hybrid = (lambda prompts, _m=make: LookupDrafter(_m(prompts)))
                ms.append(SpecMethod(target, hybrid, aux_ids, b, cfg, f"{b},{s},{k},{t}", name="eagle3+lookup"))
        for name in extra_baselines:
            if name == "prompt_lookup":
                ms.append(hf("prompt_lookup", f"n={opts.prompt_lookup_num_tokens}", 1,
                             {"prompt_lookup_num_tokens": opts.prompt_lookup_num_tokens}))
            elif name == "assisted":
                if assistant is None:
                    raise SpecforgeError("baseline 'assisted' needs --assistant-model PATH.")
                ms.append(hf("assisted", opts.assistant_model, 1, {"assistant_model": assistant}))
            else:
                raise SpecforgeError(f"unknown baseline '{name}'; use vanilla, prompt_lookup or assisted.")
        return ms

    extra_baselines = [b for b in opts.baselines if b != "vanilla"]
    if assistant is not None and "assisted" not in extra_baselines:
        extra_baselines.append("assisted")
    try:
        for spec_str in opts.benchmarks:
            bench, samples = load_benchmark(spec_str)
            sizes = sorted({c[0] for c in opts.configs} | ({1} if extra_baselines else set()))
            methods = methods_for(sizes)
            vanilla: dict[int, DecodeStats] = {}
            if not opts.interleave:  # each method over every sample in turn; a record as soon as it ends
                for m in methods:
                    st = run(m, samples, f"{bench} {m.name} {m.label}")
                    record(m, bench, samples, st, vanilla)
                    if m.name == "vanilla":
                        vanilla[m.batch_size] = st
                continue
            # Interleaved: every method on one block of conversations, then the next block, so a machine
            # whose speed drifts during the run slows every method alike; the records come at the end.
            from tqdm import tqdm

            block = math.lcm(*sizes)  # every batch size splits a block as it would split the whole set
            totals = {id(m): DecodeStats(num_steps=getattr(getattr(m, "cfg", None), "num_steps", 0))
                      for m in methods}
            nblocks = -(-len(samples) // block)
            n_turns = sum(len(s.turns) for s in samples) * len(methods)
            with tqdm(total=n_turns, desc=f"{bench} interleaved", file=sys.stderr, dynamic_ncols=True) as bar:
                for i in range(nblocks):
                    part = samples[i * block:(i + 1) * block]
                    for m in methods:
                        bar.set_postfix_str(f"block {i + 1}/{nblocks}: {m.name} {m.label}".strip(), refresh=False)
                        totals[id(m)].merge(run(m, part, "", bar))
            vanilla = {m.batch_size: totals[id(m)] for m in methods if m.name == "vanilla"}
            for m in methods:
                record(m, bench, samples, totals[id(m)], vanilla)
    finally:
        if writer.records:
            print_table(writer.records)
            if opts.plots:
                for p in write_plots(writer.records, opts.output):
                    logger.info("wrote %s", p)
            logger.info("wrote %d records to %s", len(writer.records), opts.output)
    return writer.records
