"""Where a draft's first token is accepted: its agreement with the target's greedy token, by the target's confidence.

For every supervised position of the given conversations, the target's top-1 probability p1 for the next
token (teacher-forced on the conversation, as in training) is binned, and each bin reports its share of
positions, the draft's first-token agreement (TTT step 0: what decides the first drafted token at decode
time) and how often the target's token lies outside the draft vocab (a certain miss). It shows how far a
draft is from the target in the positions the target is sure about, and how much of the text the target is
unsure about, where predicting its argmax is hard for any small draft. Example::

    python benchmarks/acceptance_by_confidence.py --draft smollm2-135m-instruct-eagle3 \
        --data WORK/dataset/regen_eval.jsonl --chat-template smollm2 --output conf.json
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import sys

import torch

# Run from a checkout without installing: the repository root is the parent of this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.97, 1.0001)


@torch.no_grad()
def first_token_agreement(draft, target, ids: torch.Tensor, loss_mask: torch.Tensor):
    """``(p1, agree, in_vocab, last, want)`` over the positions TTT step 0 scores, for one conversation ``ids [L]``.

    p1: the target's top-1 probability of the token the draft predicts; agree: the draft's argmax (mapped to
    the target vocab) equals the target's; in_vocab: the target's argmax is in the draft vocab; last: the
    token the draft reads (the one before the predicted one); want: the target's argmax."""
    from specforge.eagle3.ttt import (
        get_attention_backend,
        ttt_input_ids,
        ttt_valid_mask,
    )

    ids, lm = ids[None], loss_mask[None]
    L = ids.shape[1]
    out = target.generate_eagle3_data(ids)
    probs = torch.softmax((out.last_hidden @ target.lm_head_weight.T).float(), -1)[0]  # [L,V]
    p1, targ = probs.max(-1)
    dtype = next(draft.parameters()).dtype
    pos = torch.arange(L)[None]
    hidden = draft.project_hidden_states(out.aux_hidden.to(dtype))
    h = draft.ttt_step(draft.embed_input_ids(ttt_input_ids(ids, 0)).to(dtype), hidden, pos, [], None,
                       get_attention_backend(None))
    t = ttt_valid_mask(0, lm, torch.ones_like(lm), torch.ones_like(lm))[0].nonzero().flatten()
    arg = draft.compute_logits(h[0, t]).argmax(-1)
    pred = arg + draft.d2t[arg]
    nxt = t + 1  # step 0 at position t drafts the token the target predicts at t+1
    return p1[nxt], pred == targ[nxt], draft.t2d[targ[nxt]], ids[0, nxt], targ[nxt]


def pair_counts(convs, tok, renderer, max_length: int) -> collections.Counter:
    """How often each (token, next token) pair occurs at a supervised position of ``convs``."""
    from specforge.data.preprocess import tokenize_conversation

    counts: collections.Counter = collections.Counter()
    for messages in convs:
        ids, lm = tokenize_conversation(messages, tok, renderer, max_length)
        counts.update((ids[i - 1], ids[i]) for i in range(1, len(ids)) if lm[i])
    return counts


def main() -> None:
    from specforge.data.preprocess import load_conversations, tokenize_conversation
    from specforge.data.template import get_renderer
    from specforge.eagle3.auto import AutoEagle3DraftModel
    from specforge.errors import SpecforgeError
    from specforge.fileio import atomic_open
    from specforge.modeling.loading import (
        load_target_model,
        load_tokenizer,
        resolve_dtype,
    )
    from specforge.modeling.target.hf_target import HFEagle3TargetModel
    from specforge.shipped_drafts import resolve_draft

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draft", required=True, help="draft checkpoint/export dir or a shipped draft's name")
    ap.add_argument("--target-model-path", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--data", required=True, help="conversations JSONL (e.g. held-out regenerated answers)")
    ap.add_argument("--chat-template", default="smollm2")
    ap.add_argument("--n", type=int, default=40, help="conversations to score")
    ap.add_argument("--max-length", type=int, default=768)
    ap.add_argument("--dtype", default="auto", help="target dtype (the draft runs in fp32)")
    ap.add_argument("--train-data", nargs="*", default=[],
                    help="the draft's training conversations: adds a table of agreement by how often the pair "
                    "(token read, target's token) occurs in them (is the draft short of data?)")
    ap.add_argument("--output", help="write the bins as JSON here")
    a = ap.parse_args()
    try:
        convs = load_conversations(a.data)[:a.n]  # bad data fails before any model loads
        draft = AutoEagle3DraftModel.from_pretrained(resolve_draft(a.draft, "--draft")).float().eval()
        model = load_target_model(a.target_model_path, dtype=resolve_dtype(a.dtype, "cpu"))
        draft.load_embedding(model.get_input_embeddings().weight.detach())
        target = HFEagle3TargetModel(model, draft_config=draft.config)
        tok = load_tokenizer(a.target_model_path)
        renderer = get_renderer(a.chat_template, tok)
    except SpecforgeError as e:
        sys.exit(f"error: {e}")
    from tqdm import tqdm

    cols: list[list[torch.Tensor]] = [[] for _ in range(5)]
    for messages in tqdm(convs, desc="score", file=sys.stderr):
        ids, lm = tokenize_conversation(messages, tok, renderer, a.max_length)
        for col, v in zip(cols, first_token_agreement(draft, target, torch.tensor(ids), torch.tensor(lm))):
            col.append(v)
    p1, agree, inv, last, want = (torch.cat(c) for c in cols)
    agree, inv = agree.float(), inv.float()
    n = p1.numel()
    rows = []
    print(f"{n} positions in {len(convs)} conversations; draft agreement {agree.mean():.3f}, "
          f"target mean top-1 probability {p1.mean():.3f}")
    print(f"{'target p1':>12} {'share':>6} {'agree':>6} {'out of vocab':>12}")
    for lo, hi in itertools.pairwise(EDGES):
        m = (p1 >= lo) & (p1 < hi)
        k = int(m.sum())
        row = {"p1_from": lo, "p1_to": min(hi, 1.0), "share": k / n,
               "agree": float(agree[m].mean()) if k else None, "out_of_vocab": float(inv[m].eq(0).float().mean())
               if k else None, "positions": k}
        rows.append(row)
        print(f"{lo:5.2f}-{min(hi, 1.0):4.2f} {row['share']:6.3f} "
              f"{row['agree'] if k else float('nan'):6.3f} {row['out_of_vocab'] if k else float('nan'):12.3f}")
    freq_rows = []
    if a.train_data:
        counts: collections.Counter = collections.Counter()
        try:
            for path in a.train_data:
                counts += pair_counts(load_conversations(path), tok, renderer, a.max_length)
        except SpecforgeError as e:
            sys.exit(f"error: {e}")
        seen = torch.tensor([counts.get((int(x), int(y)), 0) for x, y in zip(last, want)])
        print(f"\nby how often (token read, target's token) occurs in the training data ({', '.join(a.train_data)})")
        print(f"{'seen':>10} {'share':>6} {'agree':>6} {'agree, p1>=0.9':>15}")
        for lo, hi in ((0, 1), (1, 5), (5, 20), (20, 100), (100, 1 << 62)):
            m = (seen >= lo) & (seen < hi)
            k, hc = int(m.sum()), m & (p1 >= 0.9)
            row = {"seen_from": lo, "seen_to": hi, "share": k / n, "agree": float(agree[m].mean()) if k else None,
                   "agree_p1_ge_0.9": float(agree[hc].mean()) if int(hc.sum()) else None, "positions": k}
            freq_rows.append(row)
            label = f"{lo}" if hi == lo + 1 else (f"{lo}+" if hi > 1 << 40 else f"{lo}-{hi - 1}")
            fmt = [f"{row[c]:.3f}" if row[c] is not None else "  -" for c in ("agree", "agree_p1_ge_0.9")]
            print(f"{label:>10} {row['share']:6.3f} {fmt[0]:>6} {fmt[1]:>15}")
    if a.output:
        with atomic_open(a.output) as f:
            json.dump({"draft": a.draft, "data": a.data, "positions": n, "agree": float(agree.mean()),
                       "mean_p1": float(p1.mean()), "bins": rows, "train_data": a.train_data,
                       "by_training_count": freq_rows}, f, indent=2)


if __name__ == "__main__":
    main()
