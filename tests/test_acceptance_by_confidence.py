"""benchmarks/acceptance_by_confidence.py counts the same first-token agreements as the training unroll does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tests.conftest import tiny_llama_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "acceptance_by_confidence.py"


def test_first_token_agreement_matches_the_ttt_unroll_metrics():
    from transformers import LlamaForCausalLM

    from specforge.eagle3.auto import AutoEagle3DraftModel, derive_draft_config
    from specforge.eagle3.ttt import Eagle3TTT
    from specforge.modeling.target.hf_target import HFEagle3TargetModel

    spec = importlib.util.spec_from_file_location("acceptance_by_confidence", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    torch.manual_seed(0)
    cfg = tiny_llama_config(vocab_size=8)
    model = LlamaForCausalLM(cfg).eval()
    draft = AutoEagle3DraftModel.from_config(derive_draft_config(cfg, draft_vocab_size=4)).eval()
    draft.load_embedding(model.get_input_embeddings().weight.detach())
    # map the draft vocab onto every other target token, so some target argmaxes lie outside it
    t2d = torch.zeros(8, dtype=torch.bool)
    t2d[::2] = True
    draft.t2d.copy_(t2d)
    draft.d2t.copy_(t2d.nonzero().flatten() - torch.arange(4))
    target = HFEagle3TargetModel(model, draft_config=draft.config)
    ids = torch.randint(8, (60,))  # a tiny vocab: a random draft agrees now and then, not always
    lm = torch.zeros(60, dtype=torch.long)
    lm[10:] = 1
    with torch.no_grad():
        draft.lm_head.weight.normal_(0, 1)  # a random head that varies its guesses
        p1, agree, inv, last, want = mod.first_token_agreement(draft, target, ids, lm)
        out = target.generate_eagle3_data(ids[None])
        ttt = Eagle3TTT(draft, ttt_length=1)
        # the unroll's own count, one supervised position at a time: its per-position verdicts
        ref = []
        for t in lm.nonzero().flatten().tolist():
            one = torch.zeros_like(lm)
            one[t] = 1
            _, m = ttt(ids[None], None, one[None], out.aux_hidden, target.logits(out))
            if int(m["step_scored"][0]):
                ref.append(bool(m["step_correct"][0]))
    assert agree.tolist() == ref
    assert 0 < sum(ref) < len(ref)  # neither all nor none: the comparison is not trivial
    assert bool((~inv).any()) and not bool(agree[~inv].any())  # outside the draft vocab: always a miss
    assert bool(((p1 > 0) & (p1 <= 1)).all())
    pos = lm.nonzero().flatten()[: last.numel()] + 1  # the token read: the one after each scored position
    assert last.tolist() == ids[pos].tolist()
    assert inv.tolist() == t2d[want].tolist()
