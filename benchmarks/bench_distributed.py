"""Distributed training cost on this machine: 1 vs 2 data-parallel ranks, and TP=2 vs TP=1 target forward.

Real SmolLM2-135M-Instruct target (fp32), SmolLM2-shaped draft (configs/smollm2-135m-eagle3.json, draft vocab
16384, TTT 7), random token ids, batch 1 per rank, every position supervised. Each configuration is a fresh
(torchrun) process group on gloo with ``--threads`` torch threads per rank (default 1: on a shared, loaded
machine a 2-thread process spends much of its time waiting at thread barriers, which would measure the
load, not the method). Reported per step: wall seconds (median) and CPU seconds summed over all ranks
(the work the configuration costs, less sensitive to other users of the machine).

    python benchmarks/bench_distributed.py                      # all configurations, markdown table
    python benchmarks/bench_distributed.py --length 256 --steps 4 --markdown /tmp/dist.md

* ``train``: one full online step (target forward + teacher + TTT forward/backward + DDP all-reduce +
  AdamW); the figure is trained tokens per second over all ranks.
* ``target``: the EAGLE-3 target forward alone (aux states + final hidden + teacher), TP=1 (HF model) vs
  the sharded Llama TP target. SmolLM2 has 9 query / 3 KV heads, so its only TP size is 3 (``--tp-size 2``
  is refused with one line); TP=2 runs on a random model of SmolLM2's size with 8 / 2 heads (head dim 72).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "smollm2-135m-eagle3.json")


def worker(mode: str, tp: int, length: int, steps: int, out: str, target_path: str, threads: int) -> None:
    """Run one configuration inside this (possibly torchrun-launched) process; rank 0 writes ``out``."""
    import torch

    sys.path.insert(0, ROOT)
    from specforge.core.eagle3 import Eagle3TTT
    from specforge.modeling.auto import AutoDraftModelConfig, AutoEagle3DraftModel
    from specforge.modeling.loading import DEFAULT_TARGET, load_target_model, load_tp_target
    from specforge.modeling.target import HFEagle3TargetModel
    from specforge.train import dist

    torch.set_num_threads(threads)
    info = dist.init_distributed("cpu", 10.0, tp_size=tp)
    target_path = target_path or DEFAULT_TARGET
    lm = (load_tp_target(target_path, info.tp_group, dtype=torch.float32) if tp > 1
          else load_target_model(target_path, dtype=torch.float32))
    target = HFEagle3TargetModel(lm)
    cfg = AutoDraftModelConfig.from_file(CONFIG)
    Vd = cfg.draft_vocab_size
    t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    t2d[:Vd] = True
    g = torch.Generator().manual_seed(info.dp_rank)
    ids = torch.randint(0, cfg.vocab_size, (1, length), generator=g)
    att = torch.ones(1, length, dtype=torch.long)
    times, cpu = [], []
    if mode == "target":
        for s in range(steps + 1):
            dist.barrier(info)
            t0, c0 = time.perf_counter(), time.process_time()
            o = target.generate_eagle3_data(ids, att)
            target.teacher(o, t2d)
            if s:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    else:
        torch.manual_seed(0)
        draft = AutoEagle3DraftModel.from_config(cfg)
        with torch.no_grad():
            draft.t2d.copy_(t2d)
        draft.load_embedding(lm.get_input_embeddings().weight)
        model = dist.wrap_ddp(Eagle3TTT(draft, ttt_length=7), "cpu", info)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for s in range(steps + 1):
            dist.barrier(info)
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                o = target.generate_eagle3_data(ids, att)
                teacher = target.teacher(o, t2d)
            loss, _ = model(ids, att, att, o.aux_hidden, teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if s:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    cpu_all = float(dist.all_reduce_sum(torch.tensor([statistics.median(cpu)], dtype=torch.float64), info)[0])
    if info.is_main:
        med = statistics.median(times)
        with open(out, "w") as f:
            json.dump({"mode": mode, "target": "SmolLM2-135M" if target_path == DEFAULT_TARGET else
                       "SmolLM2-size, 8/2 heads (random)", "world": info.world_size, "tp": tp, "dp": info.dp_size,
                       "threads_per_rank": torch.get_num_threads(), "length": length, "s_per_step": med, "cpu_s_per_step": cpu_all,
                       "tokens_per_s": info.dp_size * length / med}, f)
    dist.shutdown(info)


def eight_head_target(out: str) -> str:
    """A random Llama of SmolLM2's size (hidden 576, 30 layers, vocab 49152) with 8 / 2 heads, so TP=2 fits."""
    import torch
    from transformers import LlamaForCausalLM

    sys.path.insert(0, ROOT)
    from specforge.modeling.loading import DEFAULT_TARGET, load_config

    cfg = load_config(DEFAULT_TARGET)
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 8, 2, 72
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def launch(mode: str, nproc: int, tp: int, length: int, steps: int, threads: int, target: str = "") -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    me = [os.path.abspath(__file__), "--worker", mode, "--tp", str(tp), "--length", str(length),
          "--steps", str(steps), "--out", out, "--target", target, "--threads", str(threads)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *me]
           if nproc > 1 else [sys.executable, *me])
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} nproc={nproc} tp={tp} failed:\n{res.stderr[-2000:]}")
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target", default="", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=256, help="tokens per sample (batch 1 per rank)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.tp, a.length, a.steps, a.out, a.target, a.threads)
        return
    n, k, th = a.length, a.steps, a.threads
    rows = [launch("train", 1, 1, n, k, th), launch("train", 2, 1, n, k, th),
            launch("target", 1, 1, n, k, th), launch("target", 3, 3, n, k, th)]
    with tempfile.TemporaryDirectory() as d:
        eight = eight_head_target(d)
        rows += [launch("target", 1, 1, n, k, th, eight), launch("target", 2, 2, n, k, th, eight)]
    lines = ["| what | target | ranks | tp × dp | threads/rank | wall s/step (median) | CPU s/step (all ranks) "
             "| tokens/s (all ranks) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        what = "train step (target + draft + AdamW)" if r["mode"] == "train" else "target forward + teacher"
        lines.append(f"| {what} | {r['target']} | {r['world']} | {r['tp']} × {r['dp']} | {r['threads_per_rank']} | "
                     f"{r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | {r['tokens_per_s']:.0f} |")
    text = "\n".join(lines)
    print(text)
    print(json.dumps(rows))
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
