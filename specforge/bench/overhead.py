"""How close the built-in decoder gets to its ideal speed-up (the decoder's own overhead).

With an oracle draft (it proposes the target's greedy output, so τ = k + 1 on every full step) the ideal
speed-up over plain decoding is ``τ · t_target / (t_verify + k · t_draft)``: ``t_target`` one decoding
forward of the target, ``t_verify`` one verification forward of k + 1 tokens, ``k · t_draft`` the draft
work of one step. All three are measured inside the same runs (the decoder times its target and draft
calls), so the gap between ideal and measured is the decoder's own bookkeeping (tree building, masks,
cache moves, Python). The "oracle" rows pay no draft cost; the "oracle+draft" rows also run a random
EAGLE-3 draft of the target's dimensions on every call (:class:`ShadowDrafter`), i.e. a real draft's cost.

Run: ``python benchmarks/bench_model_speedup.py --decoder-overhead [--max-new-tokens 64 ...]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import torch

from specforge.bench.datasets import load_benchmark
from specforge.bench.methods import HFGenerateMethod, ShadowDrafter
from specforge.bench.runner import _eos_ids, chat_ids
from specforge.fileio import atomic_open
from specforge.inference.decoder import SpecConfig, SpeculativeDecoder
from specforge.inference.drafters import Eagle3Drafter, OracleDrafter

logger = logging.getLogger(__name__)


def _run(target, drafter_fn, cfg, prompts, aux):
    outs, st = SpeculativeDecoder(target, drafter_fn(), cfg, aux).generate(prompts)
    return outs, st


def measure(model_path: str, benchmark: str, max_new_tokens: int, chains: list[int], dtype: str, device: str,
            repeats: int) -> dict:
    """Run vanilla (HF and built-in, steps 0) and oracle chains; return timings and ideal vs measured."""
    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config
    from specforge.modeling.loading import (
        load_target_model,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
    )
    from specforge.modeling.target import aux_layer_ids

    device = resolve_device(device)
    dt = resolve_dtype(dtype, device)
    tok = load_tokenizer(model_path)
    target = load_target_model(model_path, dtype=dt, device=device)
    _, samples = load_benchmark(benchmark)
    prompts = [chat_ids(tok, [{"role": "user", "content": s.turns[0]}]) for s in samples]
    eos = _eos_ids(target, tok)
    torch.manual_seed(0)
    dcfg = derive_draft_config(target.config)
    draft = AutoEagle3DraftModel.from_config(dcfg)
    draft.load_embedding(target.get_input_embeddings().weight)
    draft.to(device=device, dtype=dt).eval().requires_grad_(False)
    aux = aux_layer_ids(target.config.num_hidden_layers, dcfg)
    hf = HFGenerateMethod("vanilla", "greedy", target, 1, max_new_tokens, 0.0, eos, tok.pad_token_id or 0)

    rows: dict[str, list] = {}

    def add(name, st):
        rows.setdefault(name, []).append(st)

    hf.max_new_tokens = 4
    hf.generate(prompts[:1])  # warm-up
    hf.max_new_tokens = max_new_tokens
    refs = [hf.generate([p])[0][0] for p in prompts]
    base_cfg: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": max_new_tokens, "eos_token_ids": tuple(sorted(eos))}
    for _ in range(repeats):  # interleave the methods so machine-load drift hits all of them alike
        for p, ref in zip(prompts, refs):
            outs, st = hf.generate([p])
            add("hf_vanilla", st)
            _, st = _run(target, lambda: None, SpecConfig(0, 1, 1, **base_cfg), [p], None)
            add("engine_steps0", st)
            for k in chains:
                cfg = SpecConfig(k, 1, k + 1, **base_cfg)
                full = [p + ref]
                outs, st = _run(target, lambda full=full: OracleDrafter(full, target.config.vocab_size), cfg, [p], None)
                assert outs[0] == ref, "oracle decoding diverged from greedy"
                add(f"oracle k={k}", st)
                outs, st = _run(target, lambda full=full: ShadowDrafter(OracleDrafter(full, target.config.vocab_size),
                                                              Eagle3Drafter(draft)), cfg, [p], aux)
                add(f"oracle+draft k={k}", st)

    def tot(name, attr):
        return sum(getattr(s, attr) for s in rows[name])

    def decode_time_per_token(name):
        # Decode phase only: the first new token comes from the prefill, which speculation does not change.
        return (tot(name, "wall_s") - tot(name, "prefill_s")) / max(1, tot(name, "new_tokens") - len(rows[name]))

    van = rows["engine_steps0"]
    t_target = sum(s.verify_s for s in van) / max(1, sum(s.verify_calls for s in van))
    hf_wall = tot("hf_vanilla", "wall_s")
    t_van = decode_time_per_token("engine_steps0")
    result = {"model": model_path, "benchmark": benchmark, "max_new_tokens": max_new_tokens, "device": device,
              "dtype": str(dt).replace("torch.", ""), "repeats": repeats, "t_target_s": t_target,
              "engine_steps0_decode_s_per_token": t_van,
              "hf_vanilla_tok_s": tot("hf_vanilla", "new_tokens") / hf_wall,
              "engine_steps0_tok_s": tot("engine_steps0", "new_tokens") / tot("engine_steps0", "wall_s"),
              "rows": []}
    for name in rows:  # noqa: PLC0206  (tot() reads rows[name] itself)
        if not name.startswith("oracle"):
            continue
        calls = tot(name, "verify_calls")
        k = int(name.split("k=")[1])
        tau = sum(sum(s.accept_lengths) for s in rows[name]) / max(1, sum(len(s.accept_lengths) for s in rows[name]))
        tau_eff = (tot(name, "new_tokens") - len(rows[name])) / calls  # tokens emitted per verification
        t_verify = tot(name, "verify_s") / calls
        t_draft_step = tot(name, "draft_step_s") / calls
        wall = tot(name, "wall_s")
        ideal = tau_eff * t_target / (t_verify + t_draft_step)
        measured = t_van / decode_time_per_token(name)
        result["rows"].append({
            "method": name, "k": k, "tau": tau, "tau_eff": tau_eff, "t_verify_s": t_verify,
            "k_t_draft_s": t_draft_step, "ideal_speedup": ideal, "measured_speedup": measured,
            "measured_speedup_vs_hf_wall": hf_wall / wall, "fraction_of_ideal": measured / ideal,
            "tokens_per_s": tot(name, "new_tokens") / wall,
            "overhead_per_step_ms": 1000 * (wall - tot(name, "prefill_s") - tot(name, "verify_s")
                                            - tot(name, "draft_step_s")) / calls,
        })
    return result


def to_markdown(res: dict) -> str:
    """The result as a markdown table."""
    lines = [
        (f"t_target (one decode forward) = {1000 * res['t_target_s']:.1f} ms; built-in steps 0 decode "
         f"{1000 * res['engine_steps0_decode_s_per_token']:.1f} ms/token; end to end: HF generate "
         f"{res['hf_vanilla_tok_s']:.1f} tok/s, built-in steps 0 {res['engine_steps0_tok_s']:.1f} tok/s"),
        "",
        ("| method | τ (emitted/verification) | t_verify ms | k·t_draft ms | ideal | measured decode speed-up "
         "| fraction of ideal | overhead ms/step | wall speed-up vs HF generate | tok/s |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['method']} | {r['tau']:.2f} ({r['tau_eff']:.2f}) | {1000 * r['t_verify_s']:.1f} | "
            f"{1000 * r['k_t_draft_s']:.1f} | {r['ideal_speedup']:.2f}× | {r['measured_speedup']:.2f}× | "
            f"{100 * r['fraction_of_ideal']:.0f}% | {r['overhead_per_step_ms']:.1f} | "
            f"{r['measured_speedup_vs_hf_wall']:.2f}× | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI of the overhead measurement (see module docstring)."""
    from specforge.flags import add_target_flag
    from specforge.logs import setup_logging

    ap = argparse.ArgumentParser(prog="bench_model_speedup.py --decoder-overhead", description=__doc__.split("\n\n")[0])
    add_target_flag(ap, ("--model-path", "--target-model-path"))
    ap.add_argument("--benchmark", default="mtbench:3")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--chains", type=int, nargs="+", default=[3, 7])
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--output", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    setup_logging()
    res = measure(args.target_model_path, args.benchmark, args.max_new_tokens, args.chains, args.dtype, args.device,
                  args.repeats)
    print(to_markdown(res))
    if args.output:
        with atomic_open(args.output) as f:
            json.dump(res, f, indent=1)
    return 0
