"""A quick self-distilled EAGLE-3 draft for the default target, in minutes on a CPU (a stand-in, not a good draft).

llama.cpp answers the first user turn of N ShareGPT conversations greedily (the target's own outputs: the
data EAGLE-3 maintainers say matters most); the HF copy of the target gives the aux states and teacher once;
the draft is then trained on those cached states with specforge's TTT loss (``specforge.core.eagle3``).
Writes a specforge checkpoint dir (``config.json`` + ``model.safetensors``) that ``specforge export`` and
``specforge bench`` read. Example::

    python benchmarks/quick_draft.py --data cache/dataset/sharegpt_train.jsonl --n 48 --steps 300 --output drafts/quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

# Run from a checkout without installing: the repository root is the parent of this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="conversations JSONL (specforge prepare-data output)")
    ap.add_argument("--n", type=int, default=48, help="conversations to answer")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--draft-vocab-size", type=int, default=4096)
    ap.add_argument("--intermediate-size", type=int, default=1536)
    ap.add_argument("--ttt-length", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from specforge.bench.llamacpp import LlamaCppServer
    from specforge.bench.runner import chat_ids
    from specforge.core.eagle3 import Eagle3TTT
    from specforge.export.gguf import target_gguf_path
    from specforge.fileio import atomic_path, iter_jsonl
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
    from specforge.modeling.loading import (
        DEFAULT_TARGET,
        load_target_model,
        load_tokenizer,
    )
    from specforge.modeling.target import HFEagle3TargetModel

    t0 = time.time()
    tok = load_tokenizer(DEFAULT_TARGET)
    prompts = []
    for _, row in iter_jsonl(a.data):
        user = next((m["content"] for m in row["conversations"] if m["role"] == "user"), None)
        if user:
            prompts.append(chat_ids(tok, [{"role": "user", "content": user[:600]}]))
        if len(prompts) == a.n:
            break
    with LlamaCppServer(str(target_gguf_path(DEFAULT_TARGET)), n_ctx=2048) as srv:
        answers = [srv.complete(p, a.max_new_tokens, token_ids=True).tokens for p in prompts]
    print(f"[{time.time() - t0:.0f}s] {len(prompts)} answers from llama.cpp", flush=True)
    target = HFEagle3TargetModel(load_target_model(DEFAULT_TARGET, dtype=torch.float32))
    seqs = [p + r for p, r in zip(prompts, answers)]
    V, Vd = 49152, a.draft_vocab_size
    counts = torch.zeros(V)
    for p, s in zip(prompts, seqs):
        counts += torch.bincount(torch.tensor(s[len(p):]), minlength=V).float()
    vocab = torch.topk(counts + torch.rand(V) * 1e-3, Vd).indices.sort().values
    cfg = LlamaConfig(hidden_size=576, intermediate_size=a.intermediate_size, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=V, rms_norm_eps=1e-5, rope_theta=100000.0,
                      max_position_embeddings=8192, num_hidden_layers=1, tie_word_embeddings=False)
    cfg.architectures, cfg.draft_vocab_size, cfg.target_hidden_size = ["LlamaForCausalLMEagle3"], Vd, 576
    draft = LlamaForCausalLMEagle3(cfg)
    draft.d2t.copy_(vocab - torch.arange(Vd))
    draft.t2d.zero_()
    draft.t2d[vocab] = True
    draft.load_embedding(target.input_embedding_weight)
    cached = []  # per sequence: ids, loss mask, aux states, teacher (computed once)
    for p, s in zip(prompts, seqs):
        ids = torch.tensor([s])
        lm = torch.zeros_like(ids)
        lm[0, len(p) - 1:] = 1
        out = target.generate_eagle3_data(ids, torch.ones_like(ids))
        cached.append((ids, lm, out.aux_hidden, target.teacher(out, draft.t2d)))
    print(f"[{time.time() - t0:.0f}s] target states cached", flush=True)
    ttt = Eagle3TTT(draft, ttt_length=a.ttt_length)
    params = [q for q in draft.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.steps, pct_start=0.05)
    for step in range(a.steps):
        opt.zero_grad()
        for j in torch.randperm(len(cached))[: a.batch_size].tolist():
            ids, lm, aux, teacher = cached[j]
            loss, metrics = ttt(ids, None, lm, aux, teacher)
            (loss / a.batch_size).backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == a.steps - 1:
            acc = [round(float(x), 2) for x in metrics["step_acc"]]
            print(f"[{time.time() - t0:.0f}s] step {step} loss {float(loss.detach()):.3f} acc {acc}", flush=True)
    conf = cfg.to_dict()
    conf.update(architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=Vd, target_hidden_size=576)
    with atomic_path(a.output, is_dir=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(conf, indent=2))
        save_file(draft.state_dict_for_save(), str(Path(tmp) / "model.safetensors"))
    print(f"[{time.time() - t0:.0f}s] wrote {a.output}")


if __name__ == "__main__":
    main()
