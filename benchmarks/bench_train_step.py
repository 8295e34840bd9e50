"""One EAGLE-3 training step (TTT forward + backward + AdamW) at SmolLM2-135M draft dimensions.

Random weights, random aux states and a random teacher (its argmax always in the draft vocab and the
loss mask all ones: the worst case, every position gets logits). Each (backend, length) runs in its own
subprocess so its peak RSS (``ru_maxrss``) is its own.

    python benchmarks/bench_train_step.py                       # lean + eager at 512/1024/2048
    python benchmarks/bench_train_step.py --backends sdpa --lengths 512 --steps 3
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


def one(backend: str, length: int, steps: int, threads: int, loss_frac: float) -> dict:
    """Time ``steps`` training steps after one warm-up; return a result dict."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from specforge.core.eagle3 import Eagle3TTT, TeacherTargets
    from specforge.modeling.auto import AutoDraftModelConfig, AutoEagle3DraftModel

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch.manual_seed(0)
    cfg = AutoDraftModelConfig.from_file(CONFIG)
    draft = AutoEagle3DraftModel.from_config(cfg)
    draft.load_embedding(torch.randn(cfg.vocab_size, cfg.hidden_size) * 0.02)
    ttt = Eagle3TTT(draft, ttt_length=7, attention_backend=backend)
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-4)
    B, L, Vd = 1, length, cfg.draft_vocab_size
    ids = torch.randint(0, cfg.vocab_size, (B, L))
    aux = torch.randn(B, L, 3 * cfg.hidden_size)
    am = torch.ones(B, L, dtype=torch.long)
    lm = torch.zeros(B, L, dtype=torch.long)
    lm[:, int(L * (1 - loss_frac)):] = 1
    probs = torch.softmax(torch.randn(B, L, Vd) * 2, -1)
    draft_ids = probs.argmax(-1)
    teacher = TeacherTargets(probs=probs, mass=torch.full((B, L), 0.95), target_ids=draft_ids + draft.d2t[draft_ids],
                             in_draft=torch.ones(B, L, dtype=torch.bool))
    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = ttt(ids, am, lm, aux, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s:  # the first step warms up allocator and kernels
            times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    return {"backend": backend, "length": L, "loss_frac": loss_frac, "s_per_step": sec, "tokens_per_s": B * L / sec,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "import_rss_gib": rss_import, "loss": float(loss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["sdpa", "eager"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per config (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss-frac", type=float, default=1.0, help="fraction of positions with loss_mask=1")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--one", nargs=2, metavar=("BACKEND", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps, args.threads, args.loss_frac)))
        return 0
    rows = []
    for L in args.lengths:
        for be in args.backends:
            cmd = [sys.executable, __file__, "--one", be, str(L), "--steps", str(args.steps),
                   "--threads", str(args.threads), "--loss-frac", str(args.loss_frac)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{be} L={L} failed (rc {p.returncode}): {p.stderr.strip()[-300:]}", file=sys.stderr)
                rows.append({"backend": be, "length": L, "failed": p.returncode})
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| backend | length | s/step | tokens/s | peak RSS (GiB) | loss |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['backend']} | {r['length']} | failed (rc {r['failed']}) | | | |")
        else:
            lines.append(f"| {r['backend']} | {r['length']} | {r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | "
                         f"{r['peak_rss_gib']:.2f} | {r['loss']:.4f} |")
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
