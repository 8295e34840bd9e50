"""Throughput levers of training against their exact/fp32 references: bf16 autocast (within a stated
tolerance of fp32), the teacher computed only where the TTT reads it, and ``--freeze-lm-head``."""

from __future__ import annotations

import pytest
import torch
from test_ttt import H, V, VD, batch, draft_config, make_draft

from specforge.core.eagle3 import Eagle3TTT, teacher_from_hidden, teacher_positions, ttt_valid_mask
from specforge.modeling.draft import LlamaForCausalLMEagle3
from specforge.inference import precision
from specforge.train import components

# bf16 tolerance (documented in README "Training speed"): one step's loss within 1 % of fp32 and every
# gradient's cosine to fp32 above 0.999; over a short training run the first 12 losses within 1 %, the
# mean of the last 5 within 5 % of the fp32 run, and per-position accuracy within 0.1.
BF16_LOSS_RTOL, BF16_GRAD_COS, BF16_RUN_RTOL, BF16_ACC_ATOL = 1e-2, 0.999, 5e-2, 0.1


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_bf16_step_within_tolerance_of_fp32():
    ids, am, lm, aux, logits = batch(B=2, L=40, pad=True)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        d = make_draft()
        with torch.autocast("cpu", dtype=dt, enabled=dt != torch.float32):
            loss, m = Eagle3TTT(d, ttt_length=4)(ids, am, lm, aux, logits)
        loss.backward()
        out[dt] = loss.detach(), m, _grads(d)
    (l32, m32, g32), (l16, m16, g16) = out[torch.float32], out[torch.bfloat16]
    torch.testing.assert_close(l16, l32, rtol=BF16_LOSS_RTOL, atol=0)
    torch.testing.assert_close(m16["step_loss"], m32["step_loss"], rtol=BF16_LOSS_RTOL, atol=1e-3)
    assert set(g16) == set(g32)
    for n in g32:
        assert g16[n].dtype == torch.float32, n  # fp32 master weights, fp32 gradients
        cos = torch.nn.functional.cosine_similarity(g16[n].flatten(), g32[n].flatten(), 0)
        assert cos > BF16_GRAD_COS, (n, float(cos))


def test_bf16_training_run_tracks_fp32():
    """A tiny draft learns 3 samples (teacher = next token) in fp32 and in bf16 autocast from the same init."""
    g = torch.Generator().manual_seed(0)
    B, L = 3, 12
    ids = torch.randint(0, V, (B, L), generator=g)
    aux = torch.randn(B, L, 3 * H, generator=g)
    logits = torch.full((B, L, V), -4.0)
    logits.scatter_(2, ids.roll(-1, 1)[..., None], 4.0)
    am = lm = torch.ones(B, L)
    runs = {}
    for dt in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        d = LlamaForCausalLMEagle3(draft_config(draft_vocab_size=V))
        d.load_embedding(torch.randn(V, H))
        ttt = Eagle3TTT(d, ttt_length=3)
        opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=2e-2)
        losses = []
        for _ in range(25):
            with torch.autocast("cpu", dtype=dt, enabled=dt != torch.float32):
                loss, m = ttt(ids, am, lm, aux, logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        runs[dt] = torch.tensor(losses), m["step_acc"]
    (l32, a32), (l16, a16) = runs[torch.float32], runs[torch.bfloat16]
    assert l32[-1] < 0.5 * l32[0]  # it did learn
    torch.testing.assert_close(l16[:12], l32[:12], rtol=BF16_LOSS_RTOL, atol=0)  # before lr noise dominates
    torch.testing.assert_close(l16[-5:].mean(), l32[-5:].mean(), rtol=BF16_RUN_RTOL, atol=0)
    torch.testing.assert_close(a16, a32, rtol=0, atol=BF16_ACC_ATOL)


def test_dtype_auto_is_bf16_only_where_native(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert components.resolve_train_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert components.resolve_train_dtype("auto", "cpu") == torch.float32
    assert components.resolve_train_dtype("bfloat16", "cpu") == torch.bfloat16
    assert components.resolve_train_dtype("float32", "cpu") == torch.float32


def test_teacher_only_at_read_positions_changes_nothing():
    """The teacher computed at :func:`teacher_positions` only: same loss, metrics and gradients."""
    ids, am, lm, aux, _ = batch(B=2, L=17, pad=True)
    g = torch.Generator().manual_seed(5)
    hid, W = torch.randn(2, 17, H, generator=g), torch.randn(V, H, generator=g) * 2
    W[0:2 * VD:2] *= 1.5
    d_full, d_part = make_draft(), make_draft()
    full = teacher_from_hidden(hid, W, d_full.t2d, chunk=4)
    pos = teacher_positions(lm, am)
    part = teacher_from_hidden(hid, W, d_part.t2d, chunk=4, positions=pos)
    assert 0 < int(pos.sum()) < pos.numel()
    torch.testing.assert_close(part.probs[pos], full.probs[pos])
    assert not part.in_draft[~pos].any() and (part.probs[~pos] == 0).all()
    # every (step, index) the unroll trains on reads its teacher at a computed position
    for i in range(4):
        b, t = ttt_valid_mask(i, lm, am, full.in_draft).nonzero(as_tuple=True)
        assert pos[b, t + i + 1].all()
    la, ma = Eagle3TTT(d_full, ttt_length=4)(ids, am, lm, aux, full)
    lb, mb = Eagle3TTT(d_part, ttt_length=4)(ids, am, lm, aux, part)
    la.backward()
    lb.backward()
    # equal up to fp32 rounding (the teacher GEMM sees other row blocks)
    torch.testing.assert_close(lb, la)
    for k in ("step_loss", "step_acc", "step_valid"):
        torch.testing.assert_close(mb[k], ma[k])
    ga, gb = _grads(d_full), _grads(d_part)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], msg=n)


def test_freeze_lm_head_inits_from_target_rows_and_keeps_other_grads():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    target = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    with torch.no_grad():
        target.model.norm.weight.uniform_(0.5, 1.5)
    frozen, free = make_draft(), make_draft()
    components.init_head_from_target(frozen, target)
    tid = torch.arange(VD) + frozen.d2t
    torch.testing.assert_close(frozen.lm_head.weight, target.lm_head.weight[tid])
    torch.testing.assert_close(frozen.norm.weight, target.model.norm.weight)
    assert not frozen.lm_head.weight.requires_grad and frozen.norm.weight.requires_grad
    # at init the draft head equals the target head on the draft vocab
    x = torch.randn(5, H)
    torch.testing.assert_close(frozen.compute_logits(x), target.lm_head(target.model.norm(x))[:, tid])
    with torch.no_grad():
        free.lm_head.weight.copy_(frozen.lm_head.weight)
        free.norm.weight.copy_(frozen.norm.weight)
    ids, am, lm, aux, logits = batch(pad=True)
    la, _ = Eagle3TTT(frozen, ttt_length=3)(ids, am, lm, aux, logits)
    lb, _ = Eagle3TTT(free, ttt_length=3)(ids, am, lm, aux, logits)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    ga, gb = _grads(frozen), _grads(free)
    assert "lm_head.weight" not in ga and "lm_head.weight" in gb
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=0, atol=0, msg=n)
    with pytest.raises(Exception, match="freeze-lm-head"):
        narrow = LlamaForCausalLMEagle3(draft_config(hidden_size=16, num_attention_heads=2, num_key_value_heads=1))
        components.init_head_from_target(narrow, target)
