"""CPU decoding speed of the default target: bf16 vs fp32, and draft-step time vs draft vocab size.

Everything is measured side by side in one process, interleaved (A, B, A, B, ...) so that load from other
jobs on a shared machine hits every variant alike; report ratios and medians, not absolute one-off times.

* ``--part forwards``: per dtype, the target's decoding forward (1 token) ``t_target``, a verification
  forward of 8 tokens ``t_verify``, and one chain draft step ``t_draft`` (draft forward + head + top-k) of
  an EAGLE-3 draft with the target's dimensions at draft vocab sizes 8K / 16K / 32K, at a context of
  ``--context`` tokens. ``draft_vocab_ms_per_1k`` is the slope: what 1K more draft vocab costs per step.
* ``--part decode``: per dtype, whole greedy decodes of MT-bench prompts: HF ``generate`` (vanilla), the
  built-in decoder without speculation (steps 0) and with an oracle chain 7/1/8 that also runs a 16K draft
  (``oracle+draft``: the decoder at full acceptance paying a real draft's cost); tokens/s and bf16/fp32.

Run: ``python benchmarks/bench_decode_speed.py --part forwards decode --output decode_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _draft(target, vocab: int, dtype):
    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config

    torch.manual_seed(0)
    cfg = derive_draft_config(target.config, vocab)
    d = AutoEagle3DraftModel.from_config(cfg)
    d.load_embedding(target.get_input_embeddings().weight)
    return d.to(dtype=dtype).eval().requires_grad_(False), cfg


@torch.no_grad()
def forwards(targets: dict, vocabs: list[int], context: int, repeats: int) -> dict:
    """t_target, t_verify (8 tokens) and t_draft per draft vocab, per dtype, at ``context`` tokens."""
    from transformers import DynamicCache

    from specforge.inference.drafters import Eagle3Drafter
    from specforge.modeling.compat import cache_kwargs
    from specforge.modeling.target import aux_layer_ids

    out: dict = {}
    jobs = []
    for name, target in targets.items():
        ids = torch.randint(100, 40000, (1, context))
        cache = DynamicCache(config=target.config)
        target(input_ids=ids, **cache_kwargs(target, cache), use_cache=True)

        def run(target=target, cache=cache, n=1):
            target(input_ids=torch.randint(100, 40000, (1, n)), **cache_kwargs(target, cache), use_cache=True,
                   logits_to_keep=0)
            cache.crop(-n)  # back to the context (transformers 5.24: negative = tokens to drop)

        jobs.append((name, "t_target_ms", run))
        jobs.append((name, "t_verify8_ms", lambda run=run: run(n=8)))
        for v in vocabs:
            draft, cfg = _draft(target, v, next(target.parameters()).dtype)
            aux_ids = aux_layer_ids(target.config.num_hidden_layers, cfg)
            h = target(input_ids=ids, output_hidden_states=True).hidden_states
            aux = torch.cat([h[i] for i in aux_ids], -1)
            dr = Eagle3Drafter(draft)
            dr.reset(1)
            dr.commit(ids, aux, torch.arange(context)[None], torch.ones(1, context, dtype=torch.bool))

            def step(dr=dr):  # one chain draft step: the root's child, then one expansion
                tok, _ = dr.first(1)
                dr.expand(tok, torch.zeros(1, 1, dtype=torch.long), tok[:, :, None], 1, 1)

            jobs.append((name, f"t_draft_chain2_ms@{v}", step))
    for _, _, fn in jobs:  # warm-up
        fn()
    for _ in range(repeats):
        for name, key, fn in jobs:
            out.setdefault(name, {}).setdefault(key, []).append(_median_ms(fn, 3))
    res = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in out.items()}
    for name, d in res.items():  # one draft step = half of (first + one expand) is close; report the pair
        xs = [v / 1000 for v in vocabs]
        ys = [d[f"t_draft_chain2_ms@{v}"] for v in vocabs]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        d["draft_vocab_ms_per_1k"] = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return res


@torch.no_grad()
def decode(targets: dict, prompts: list[list[int]], eos: set, max_new: int, repeats: int) -> dict:
    """tokens/s of vanilla HF generate, built-in steps 0 and oracle+draft chain 7/1/8, per dtype."""
    from specforge.bench.methods import HFGenerateMethod, ShadowDrafter
    from specforge.inference.decoder import SpecConfig, SpeculativeDecoder
    from specforge.inference.drafters import Eagle3Drafter, OracleDrafter
    from specforge.modeling.target import aux_layer_ids

    base = {"temperature": 0.0, "max_new_tokens": max_new, "eos_token_ids": tuple(sorted(eos))}
    stats: dict = {}
    same: dict = {}  # per dtype and decode: None = equal to the same-dtype HF greedy output, else 1st differing index
    refs: dict = {}
    methods = []
    for name, target in targets.items():
        draft, cfg = _draft(target, 16384, next(target.parameters()).dtype)
        aux = aux_layer_ids(target.config.num_hidden_layers, cfg)
        hf = HFGenerateMethod("vanilla", "greedy", target, 1, max_new, 0.0, eos, 0)
        refs[name] = [hf.generate([p])[0][0] for p in prompts]

        def van(p, i, hf=hf):
            return hf.generate([p])

        def steps0(p, i, target=target):
            return SpeculativeDecoder(target, None, SpecConfig(0, 1, 1, **base)).generate([p])

        def oracle(p, i, target=target, draft=draft, aux=aux, name=name):
            dr = ShadowDrafter(OracleDrafter([p + refs[name][i]], target.config.vocab_size), Eagle3Drafter(draft))
            outs, st = SpeculativeDecoder(target, dr, SpecConfig(7, 1, 8, **base), aux).generate([p])
            ref = refs[name][i]
            if name == "float32":  # bit-exact in fp32; in bf16 a 1-ulp near-tie can flip (counted below)
                assert outs[0] == ref, "fp32 speculative output differs from greedy"
            agree = next((j for j, (a, b) in enumerate(zip(outs[0], ref)) if a != b), min(len(outs[0]), len(ref)))
            same.setdefault(name, []).append(agree if outs[0] != ref else None)
            return outs, st

        methods += [(name, "vanilla", van), (name, "steps0", steps0), (name, "oracle+draft 7/1/8", oracle)]
    for _ in range(repeats):
        for i, p in enumerate(prompts):
            for name, label, fn in methods:
                t0 = time.perf_counter()
                outs, st = fn(p, i)
                wall = time.perf_counter() - t0
                s = stats.setdefault(name, {}).setdefault(label, {"tokens": 0, "wall_s": 0.0, "verify_s": 0.0,
                                                                   "draft_s": 0.0, "calls": 0})
                s["tokens"] += len(outs[0])
                s["wall_s"] += wall
                s["verify_s"] += st.verify_s
                s["draft_s"] += st.draft_step_s
                s["calls"] += st.verify_calls
    for d in stats.values():
        for s in d.values():
            s["tokens_per_s"] = s["tokens"] / s["wall_s"]
            if s["calls"]:
                s["t_verify_ms"] = 1000 * s["verify_s"] / s["calls"]
                s["t_draft_ms"] = 1000 * s["draft_s"] / s["calls"]
    both = sum(a == b for a, b in zip(*refs.values())) if len(refs) == 2 else None
    return {"stats": stats, "prompts": len(prompts), "bf16_and_fp32_greedy_identical": both,
            "speculative_vs_greedy_first_difference": same}


def main(argv=None) -> int:
    from specforge.bench.datasets import load_benchmark
    from specforge.bench.runner import _eos_ids, chat_ids
    from specforge.cli import setup_logging
    from specforge.modeling.loading import (
        DEFAULT_TARGET,
        load_target_model,
        load_tokenizer,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path", default=DEFAULT_TARGET)
    ap.add_argument("--part", nargs="+", default=["forwards", "decode"], choices=["forwards", "decode"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--vocabs", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--benchmark", default="mtbench:3")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    setup_logging()
    tok = load_tokenizer(args.model_path)
    targets = {d: load_target_model(args.model_path, dtype=getattr(torch, d), device="cpu") for d in args.dtypes}
    res: dict = {"threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if "forwards" in args.part:
        res["forwards"] = forwards(targets, args.vocabs, args.context, args.repeats)
        print(json.dumps(res["forwards"], indent=1), flush=True)
    if "decode" in args.part:
        _, samples = load_benchmark(args.benchmark)
        prompts = [chat_ids(tok, [{"role": "user", "content": s.turns[0]}]) for s in samples]
        eos = _eos_ids(next(iter(targets.values())), tok)
        res["decode"] = decode(targets, prompts, eos, args.max_new_tokens, args.repeats)
        print(json.dumps(res["decode"], indent=1), flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
