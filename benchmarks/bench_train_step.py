"""One EAGLE-3 training step (teacher + TTT forward + backward + clip + AdamW) at SmolLM2-135M draft dimensions.

Random weights, random aux states and random full-vocab target logits [B,L,49152] from which the teacher
is built inside the timed step (its argmax in the draft vocab; loss mask all ones: the worst case, every
position gets logits), as in the issue-12 comparison with the peers. Each (mode, backend, length) runs in
its own subprocess so its peak RSS (``ru_maxrss``) is its own; ``--rounds`` repeats the sweep round-robin
(median per config) so that on a busy machine every mode sees the same load.

Modes: ``fp32``; ``bf16`` (autocast, fp32 master weights - what ``--dtype auto`` picks on a bf16 CPU);
``bf16-frozen`` (bf16 + ``--freeze-lm-head``: no lm_head weight gradient).

    python benchmarks/bench_train_step.py                       # sdpa, fp32 + bf16 + bf16-frozen, 512/2048
    python benchmarks/bench_train_step.py --backends sdpa eager --modes fp32 --lengths 512 1024 2048
    python benchmarks/bench_train_step.py --markdown /tmp/train_step.md   (figures: BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "smollm2-135m-eagle3.json")


MODES = ("fp32", "bf16", "bf16-frozen", "fp32-frozen")


def one(backend: str, length: int, steps: int, threads: int, loss_frac: float, mode: str = "fp32") -> dict:
    """Time ``steps`` training steps after one warm-up; return a result dict."""
    return interleaved(backend, length, steps, threads, loss_frac, [mode])[0]


def interleaved(backend: str, length: int, steps: int, threads: int, loss_frac: float, modes: list[str]) -> list[dict]:
    """Time ``steps`` steps of every mode in one process, the modes' steps alternating (a busy machine's
    load then hits every mode alike); one warm-up step each. Peak RSS is the process's (all modes)."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from specforge.core.eagle3 import Eagle3TTT, teacher_from_logits
    from specforge.modeling.auto import AutoDraftModelConfig, AutoEagle3DraftModel

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    cfg = AutoDraftModelConfig.from_file(CONFIG)
    B, L = 1, length
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, L))
    aux = torch.randn(B, L, 3 * cfg.hidden_size)
    am = torch.ones(B, L, dtype=torch.long)
    lm = torch.zeros(B, L, dtype=torch.long)
    lm[:, int(L * (1 - loss_frac)):] = 1
    emb = torch.randn(cfg.vocab_size, cfg.hidden_size) * 0.02
    runs = []
    for mode in modes:
        torch.manual_seed(0)
        draft = AutoEagle3DraftModel.from_config(cfg)
        draft.load_embedding(emb)
        if mode.endswith("-frozen"):
            draft.lm_head.weight.requires_grad_(False)
        params = [p for p in draft.parameters() if p.requires_grad]
        runs.append({"mode": mode, "draft": draft, "params": params, "opt": torch.optim.AdamW(params, lr=1e-4),
                     "ttt": Eagle3TTT(draft, ttt_length=7, attention_backend=backend), "times": []})
    logits = torch.randn(B, L, cfg.vocab_size) * 2
    logits[..., runs[0]["draft"].t2d] += 3.0  # the teacher's argmax in the draft vocab (every position trains)
    for s in range(steps + 1):
        for r in runs:
            t0 = time.perf_counter()
            teacher = teacher_from_logits(logits, r["draft"].t2d)
            bf16 = r["mode"].startswith("bf16")
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss, m = r["ttt"](ids, am, lm, aux, teacher)
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(r["params"], 0.5)
            r["opt"].step()
            if s:  # the first step warms up allocator and kernels
                r["times"].append(time.perf_counter() - t0)
            r["loss"], r["acc0"] = float(loss.detach()), float(m["step_acc"][0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = []
    for r in runs:
        sec = sorted(r["times"])[len(r["times"]) // 2]
        out.append({"mode": r["mode"], "backend": backend, "length": L, "loss_frac": loss_frac, "s_per_step": sec,
                    "tokens_per_s": B * L / sec, "peak_rss_gib": peak, "import_rss_gib": rss_import,
                    "loss": r["loss"], "acc0": r["acc0"], "interleaved": len(runs) > 1})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["sdpa"])
    ap.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16-frozen"], choices=MODES)
    ap.add_argument("--lengths", nargs="+", type=int, default=[512, 2048])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per config (median reported)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the sweep round-robin; median over rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss-frac", type=float, default=1.0, help="fraction of positions with loss_mask=1")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--interleave", action="store_true",
                    help="run the modes of a (backend, length) in one process, steps alternating (fair ratios on a "
                         "busy machine; peak RSS then covers all modes)")
    ap.add_argument("--one", nargs=3, metavar=("MODE", "BACKEND", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        modes = args.one[0].split(",")
        for r in interleaved(args.one[1], int(args.one[2]), args.steps, args.threads, args.loss_frac, modes):
            print(json.dumps(r))
        return 0
    results: dict[tuple, list[dict]] = {}
    for _ in range(args.rounds):
        for L in args.lengths:
            for be in args.backends:
                for group in ([args.modes] if args.interleave else [[m] for m in args.modes]):
                    cmd = [sys.executable, __file__, "--one", ",".join(group), be, str(L), "--steps", str(args.steps),
                           "--threads", str(args.threads), "--loss-frac", str(args.loss_frac)]
                    p = subprocess.run(cmd, capture_output=True, text=True)
                    if p.returncode != 0:
                        print(f"{group} {be} L={L} failed (rc {p.returncode}): {p.stderr.strip()[-300:]}", file=sys.stderr)
                        for mode in group:
                            results.setdefault((L, be, mode), []).append({"failed": p.returncode})
                        continue
                    for line in p.stdout.strip().splitlines()[-len(group):]:
                        r = json.loads(line)
                        results.setdefault((L, be, r["mode"]), []).append(r)
                        print(line, flush=True)
    lines = ["| mode | backend | length | s/step | tokens/s | vs fp32 | peak RSS (GiB) | loss | acc0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (L, be, mode), rs in results.items():
        ok = sorted((r for r in rs if "failed" not in r), key=lambda r: r["s_per_step"])
        if not ok:
            lines.append(f"| {mode} | {be} | {L} | failed (rc {rs[0]['failed']}) | | | | | |")
            continue
        r = ok[len(ok) // 2]
        base = [x for x in results.get((L, be, "fp32"), []) if "failed" not in x]
        ratio = ""
        if base:
            b = sorted(base, key=lambda x: x["s_per_step"])[len(base) // 2]
            ratio = f"{b['s_per_step'] / r['s_per_step']:.2f}x"
        lines.append(f"| {mode} | {be} | {L} | {r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | {ratio} | "
                     f"{r['peak_rss_gib']:.2f} | {r['loss']:.4f} | {r['acc0']:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        sys.path.insert(0, ROOT)
        from specforge.fileio import atomic_open

        with atomic_open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
