"""End-to-end training throughput: trained (and supervised) tokens/s of ``specforge train`` on real data.

Real ShareGPT conversations (the offline copy, ``prepare-data --sample-size``), the real default target
(SmolLM2-135M-Instruct) in the loop, batch 1, the SmolLM2 draft config (draft vocab 16384), TTT 7. Every
(length, mode) is one ``specforge train`` process over the same rows in the same order (same seed); the
figure is the steady state from its ``metrics.jsonl``: sum of tokens / sum of step wall time over every
step but the first (warm-up). A step's time includes collation, the target forward, the teacher, the
draft's forward/backward, clip and AdamW - what a user waits for (model loading and the cache build are
excluded).

Modes: ``fp32`` (``--dtype float32``), ``bf16`` (``--dtype bfloat16``, = ``auto`` on a bf16 CPU),
``bf16-frozen`` (+ ``--freeze-lm-head``), ``fp32-frozen``, and ``bf16-offline`` / ``bf16-frozen-offline``:
``specforge prepare-hidden-states`` first (its dump rate and the store's bytes per token are reported), then
``specforge train --hidden-states-path`` (no target forward in the loop); ``bf16-frozen-offline-fp8`` is the
latter from a ``--storage-dtype float8`` store (fp8 with per-token scales, half the bytes). Each mode also
exists with a ``-8k`` suffix: the same with the recipe's draft vocab of 8192 (``--draft-vocab-size 8192``; a
draft head half the size). Ratios are against ``fp32`` (draft vocab 16384) of the same length.

    python benchmarks/bench_train_e2e.py --lengths 512 2048 --steps 6 --markdown /tmp/e2e.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "smollm2-135m-eagle3.json"
FLAGS = {"fp32": ["--dtype", "float32"], "bf16": ["--dtype", "bfloat16"],
         "bf16-frozen": ["--dtype", "bfloat16", "--freeze-lm-head"],
         "fp32-frozen": ["--dtype", "float32", "--freeze-lm-head"],
         "bf16-offline": ["--dtype", "bfloat16"], "bf16-frozen-offline": ["--dtype", "bfloat16", "--freeze-lm-head"],
         "bf16-frozen-offline-fp8": ["--dtype", "bfloat16", "--freeze-lm-head"]}
# the same modes with the recipe's 8K draft vocab (examples/run_smollm2_eagle3.sh): a smaller draft head
FLAGS.update({f"{m}-8k": f for m, f in list(FLAGS.items())})
RECIPE_VOCAB = 8192


def run_one(data: str, work: Path, length: int, mode: str, steps: int, threads: int, extra: list[str]) -> dict:
    """One training process; returns its steady-state throughput."""
    sys.path.insert(0, str(ROOT))
    from specforge.train.trackers import read_metrics

    out = work / f"out-{length}-{mode}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    common = ["--draft-model-config", str(CONFIG), "--dtype", "bfloat16" if "bf16" in mode else "float32"]
    if mode.endswith("-8k"):
        common += ["--draft-vocab-size", str(RECIPE_VOCAB)]
    source, dump = ["--train-data-path", data, "--cache-dir", str(work / "cache"), "--max-length", str(length)], {}
    base = mode.removesuffix("-8k")
    fp8 = base.endswith("-fp8")
    if base.removesuffix("-fp8").endswith("-offline"):
        # one store per (length, vocab, storage dtype): a store refuses to be reused with another storage dtype
        hs = work / f"hs-{length}{'-fp8' if fp8 else ''}{'-8k' if mode.endswith('-8k') else ''}"
        cmd = [sys.executable, "-m", "specforge", "prepare-hidden-states", *source, *common, "--output-dir", str(hs),
               "--no-progress", *(["--storage-dtype", "float8"] if fp8 else [])]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            return {"length": length, "mode": mode, "failed": p.returncode, "stderr": p.stderr.strip()[-400:]}
        meta = json.loads((hs / "meta.json").read_text())
        tokens = sum(v["tokens"] for v in meta["splits"].values())
        size = sum(f.stat().st_size for f in hs.glob("*-*.safetensors"))
        # the wall time includes loading the target (a fixed cost) - the rate is a lower bound
        dump = {"dump_tokens_per_s": tokens / (time.perf_counter() - t0), "store_bytes_per_token": size / tokens}
        source = ["--hidden-states-path", str(hs)]
    cmd = [sys.executable, "-m", "specforge", "train", *source, *common[:2], *common[4:],
           "--output-dir", str(out), "--batch-size", "1",
           "--total-steps", str(steps), "--log-interval", "1", "--seed", "0", *FLAGS[mode], *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"length": length, "mode": mode, "failed": p.returncode, "stderr": p.stderr.strip()[-400:]}
    recs = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "train"][1:]
    t = sum(r["step_time"] for r in recs)
    tok = sum(r["tokens"] for r in recs)
    sup = sum(r["supervised_tokens"] for r in recs)
    return {"length": length, "mode": mode, "steps": len(recs), "tokens": tok, "s_per_step": t / len(recs),
            "tokens_per_s": tok / t, "supervised_tokens_per_s": sup / t, "last_loss": recs[-1]["loss"], **dump}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", nargs="+", type=int, default=[512, 2048], help="--max-length values")
    ap.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16-frozen"], choices=list(FLAGS))
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--sample-size", type=int, default=200, help="ShareGPT conversations to prepare")
    ap.add_argument("--data", default=None, help="a conversations JSONL instead of the ShareGPT sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-dir", default=None, help="keep runs/cache here (default: a temp dir)")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `specforge train` flags for every run")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from specforge.fileio import atomic_open

    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        work = Path(args.work_dir or tmp)
        data = args.data
        if data is None:
            from specforge.data.prepare import prepare_dataset

            files, _ = prepare_dataset("sharegpt", work / "data", sample_size=args.sample_size, progress=False)
            data = str(files["all"])
        extra = [a for a in args.extra if a != "--"]
        rows = []
        for L in args.lengths:
            for mode in args.modes:
                rows.append(run_one(data, work, L, mode, args.steps, args.threads, extra))
                print(json.dumps(rows[-1]), flush=True)
    lines = [("| max length | mode | s/step | trained tok/s | supervised tok/s | vs fp32 | loss (last step) "
              "| dump tok/s | store B/token |"),
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['length']} | {r['mode']} | failed (rc {r['failed']}) | | | | | | |")
            continue
        base = next((b for b in rows if b["length"] == r["length"] and b["mode"] == "fp32" and "failed" not in b), None)
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else ""
        # offline modes: the prepare step's rate and the store's size on disk (shards / tokens)
        dump = (f"{r['dump_tokens_per_s']:.0f} | {r['store_bytes_per_token']:.0f}" if "dump_tokens_per_s" in r
                else " | ")
        lines.append(f"| {r['length']} | {r['mode']} | {r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['supervised_tokens_per_s']:.0f} | {ratio} | {r['last_loss']:.3f} | {dump} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with atomic_open(args.markdown) as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
