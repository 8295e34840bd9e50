"""The TTT unroll + loss against a naive reference (explicit shifting, full logits, full masks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from specforge.core.eagle3 import Eagle3TTT, teacher_from_hidden, teacher_from_logits, ttt_input_ids, ttt_valid_mask
from specforge.errors import SpecforgeError
from specforge.modeling.draft import LlamaForCausalLMEagle3

V, VD, H = 97, 40, 32


def draft_config(**kw):
    base = dict(architectures=["LlamaForCausalLMEagle3"], vocab_size=V, draft_vocab_size=VD, hidden_size=H,
                intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                max_position_embeddings=256, rms_norm_eps=1e-6, target_hidden_size=H)
    base.update(kw)
    return LlamaConfig(**base)


def make_draft(seed=0):
    torch.manual_seed(seed)
    d = LlamaForCausalLMEagle3(draft_config())
    d.load_embedding(torch.randn(V, H))
    # a non-trivial draft vocab: every other target id, d2t offsets accordingly
    ids = torch.arange(0, 2 * VD, 2)
    d.t2d.zero_()
    d.t2d[ids] = True
    d.d2t.copy_(ids - torch.arange(VD))
    return d


def shift_left(x, n=1):
    """The reference trainers' ``padding(x, left=False)``: drop the first n along dim 1, zero-fill."""
    return torch.cat([x[:, n:], torch.zeros_like(x[:, :n])], dim=1)


def naive_ttt(draft, ids, am, lm, aux, logits, K):
    """Independent reference: explicit per-step shifts, dense masked attention, full-vocab logits."""
    B, L = ids.shape
    layer, attn = draft.midlayer, draft.midlayer.self_attn
    NH, KVH, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    p_full = torch.softmax(logits.float(), -1)
    p_d = p_full[..., draft.t2d]
    mass = p_d.sum(-1)
    p_d = p_d / mass[..., None]
    tid = logits.argmax(-1)
    tin = draft.t2d[tid]
    hidden = draft.fc(aux)
    cur_ids, tp, tm, cur_tid, cur_tin, am_t, lm_s = (shift_left(ids), shift_left(p_d), shift_left(mass),
                                                   shift_left(tid), shift_left(tin), shift_left(am), lm.clone())
    ks, vs = [], []
    total, accs, losses = 0.0, [], []
    for i in range(K):
        x = torch.cat([layer.input_layernorm(draft.embed_tokens(cur_ids)), layer.hidden_norm(hidden)], -1)
        pos = (torch.arange(L) + i)[None].expand(B, L)
        cos, sin = draft.rotary_emb(x, pos)
        q = attn.q_proj(x).view(B, L, NH, D).transpose(1, 2)
        k = attn.k_proj(x).view(B, L, KVH, D).transpose(1, 2)
        v = attn.v_proj(x).view(B, L, KVH, D).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        ks.append(k.repeat_interleave(NH // KVH, 1))
        vs.append(v.repeat_interleave(NH // KVH, 1))
        mask = torch.zeros(B, L, L * (i + 1), dtype=torch.bool)
        for b in range(B):
            for j in range(L):
                for kk in range(j + 1):
                    mask[b, j, kk] = bool(am[b, kk]) or kk == j
                for s in range(1, i + 1):
                    mask[b, j, s * L + j] = True
        scores = (q @ torch.cat(ks, 2).transpose(-1, -2)) / D**0.5
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        o = torch.softmax(scores, -1) @ torch.cat(vs, 2)
        h = hidden + attn.o_proj(o.transpose(1, 2).reshape(B, L, -1))
        hidden = h + layer.mlp(layer.post_attention_layernorm(h))
        logp = torch.log_softmax(draft.lm_head(draft.norm(hidden)).float(), -1)
        valid = lm_s.bool() & am.bool() & am_t.bool() & cur_tin
        ce = -(tp * logp).sum(-1)
        loss_i = ce[valid].sum() / max(int(valid.sum()), 1)
        total = total + 0.8**i * loss_i
        losses.append(loss_i.detach())
        pred = logp.argmax(-1)
        correct = (pred + draft.d2t[pred] == cur_tid) & valid
        # accuracy scores every supervised position: a teacher argmax outside the draft vocab is a miss
        scored = lm_s.bool() & am.bool() & am_t.bool()
        accs.append(correct.sum() / max(int(scored.sum()), 1))
        cur_ids, tp, tm, cur_tid, cur_tin, am_t, lm_s = (shift_left(t) for t in (cur_ids, tp, tm, cur_tid, cur_tin,
                                                                                 am_t, lm_s))
    return total, torch.stack(losses), torch.stack(accs)


def batch(B=2, L=11, pad=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    am = torch.ones(B, L, dtype=torch.long)
    lm = torch.ones(B, L, dtype=torch.long)
    lm[:, :3] = 0
    if pad:
        am[0, L - 3:] = 0
        lm[0, L - 3:] = 0
    aux = torch.randn(B, L, 3 * H, generator=g)
    logits = torch.randn(B, L, V, generator=g) * 3
    logits[..., 0:2 * VD:2] += 1.0  # most teacher argmaxes inside the draft vocab, some outside
    return ids, am, lm, aux, logits


@pytest.mark.parametrize("backend", ["sdpa", "eager", "flex_attention"])
@pytest.mark.parametrize("pad", [False, True])
def test_ttt_matches_naive_reference(backend, pad):
    K = 4
    ids, am, lm, aux, logits = batch(pad=pad)
    ref_draft, draft = make_draft(), make_draft()
    ref_loss, ref_steps, ref_acc = naive_ttt(ref_draft, ids, am, lm, aux, logits, K)
    ref_loss.backward()
    loss, m = Eagle3TTT(draft, ttt_length=K, attention_backend=backend)(ids, am, lm, aux, logits)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m["step_loss"], ref_steps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m["step_acc"], ref_acc)
    assert m["step_valid"].min() > 0
    assert (m["step_scored"] > m["step_valid"]).all()  # some teacher argmaxes are outside the draft vocab
    for (n, p), (_, rp) in zip(draft.named_parameters(), ref_draft.named_parameters()):
        if rp.grad is None:
            assert p.grad is None or p.grad.abs().max() == 0, n
            continue
        torch.testing.assert_close(p.grad, rp.grad, rtol=1e-4, atol=1e-5, msg=n)
    assert draft.embed_tokens.weight.grad is None  # frozen
    acc_len = 1 + torch.cumprod(m["step_acc"], 0).sum()
    torch.testing.assert_close(m["accept_length"], acc_len)


def test_accuracy_counts_out_of_draft_vocab_teachers_as_misses():
    """A draft that always proposes target id 0, a teacher whose argmax is 0 except at some positions where
    it is id 1 (outside the draft vocab): those positions are misses in the accuracy, not skipped."""
    K = 3
    ids, am, lm, aux, _ = batch(pad=True)
    B, L = ids.shape
    d = make_draft()
    with torch.no_grad():
        d.lm_head.weight.zero_()  # all draft logits equal: argmax = draft id 0 = target id 0
    oov = torch.zeros(B, L, dtype=torch.bool)
    oov[:, 5::2] = True
    logits = torch.zeros(B, L, V)
    logits[..., 0] = 5.0
    logits[oov] = 0.0
    logits[..., 1][oov] = 5.0  # target id 1: odd, not in the draft vocab
    _, m = Eagle3TTT(d, ttt_length=K)(ids, am, lm, aux, logits)
    for i in range(K):
        scored = hits = 0
        for b in range(B):
            for t in range(L - i - 1):  # index t at step i is scored against the teacher at t + i + 1
                if lm[b, t + i] and am[b, t] and am[b, t + i + 1]:
                    scored += 1
                    hits += int(not oov[b, t + i + 1])
        assert 0 < hits < scored
        assert float(m["step_acc"][i]) == pytest.approx(hits / scored)
        assert int(m["step_valid"][i]) == hits and int(m["step_scored"][i]) == scored  # loss: in-vocab only
    acc = m["step_acc"].tolist()
    assert float(m["accept_length"]) == pytest.approx(1 + acc[0] + acc[0] * acc[1] + acc[0] * acc[1] * acc[2])


def test_teacher_from_hidden_equals_logits_and_expected_acceptance():
    d = make_draft()
    g = torch.Generator().manual_seed(3)
    hid, W = torch.randn(2, 5, H, generator=g), torch.randn(V, H, generator=g)
    a = teacher_from_hidden(hid, W, d.t2d, chunk=3)
    b = teacher_from_logits(hid @ W.T, d.t2d)
    for x, y in zip((a.probs, a.mass, a.target_ids, a.in_draft), (b.probs, b.mass, b.target_ids, b.in_draft)):
        torch.testing.assert_close(x, y)
    full = torch.softmax(hid @ W.T, -1)
    torch.testing.assert_close(a.probs * a.mass[..., None], full[..., d.t2d])
    # expected acceptance of a perfect draft = the teacher's mass on the draft vocab
    ids, am, lm, aux, logits = batch(pad=False)
    _, m = Eagle3TTT(d, ttt_length=2)(ids, am, lm, aux, logits)
    assert 0 < float(m["step_expected_accept"][0]) < 1


def test_step_shift_and_valid_positions_hand_worked():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    assert ttt_input_ids(ids, 0)[0, :5].tolist() == [11, 12, 13, 14, 15]
    assert ttt_input_ids(ids, 2)[0, :3].tolist() == [13, 14, 15]
    lm = torch.tensor([[0, 0, 1, 1, 1, 1]])
    am = torch.ones(1, 6, dtype=torch.long)
    in_draft = torch.tensor([[True, True, True, True, False, True]])
    # step 0: t with lm[t], t+1<6, in[t+1] -> {2, 4} (t=3 predicts position 4, outside the draft vocab)
    assert ttt_valid_mask(0, lm, am, in_draft)[0].nonzero().flatten().tolist() == [2, 4]
    # step 1: lm[t+1], t+2<6, in[t+2] -> t in {1,2,3} minus t=2 -> {1, 3}
    assert ttt_valid_mask(1, lm, am, in_draft)[0].nonzero().flatten().tolist() == [1, 3]
    # step 2: lm[t+2], t+3<6, in[t+3] -> t in {0,1,2} minus t=1 -> {0, 2}
    assert ttt_valid_mask(2, lm, am, in_draft)[0].nonzero().flatten().tolist() == [0, 2]
    # a padded teacher position is never a target; a padded query never trains
    am2 = torch.tensor([[1, 1, 1, 1, 1, 0]])
    assert ttt_valid_mask(0, lm, am2, torch.ones(1, 6, dtype=torch.bool))[0].nonzero().flatten().tolist() == [2, 3]
    am3 = torch.tensor([[0, 1, 1, 1, 1, 1]])
    assert ttt_valid_mask(2, torch.ones(1, 6), am3, torch.ones(1, 6, dtype=torch.bool))[0].nonzero().flatten().tolist() \
        == [1, 2]


def test_bad_ttt_length():
    with pytest.raises(SpecforgeError):
        Eagle3TTT(make_draft(), ttt_length=0)


def test_overfit_tiny_samples():
    """A tiny draft overfits 3 short samples (teacher = one-hot next token): step-0 accuracy > 0.9."""
    torch.manual_seed(0)
    cfg = draft_config(hidden_size=32, draft_vocab_size=V, target_hidden_size=16)
    d = LlamaForCausalLMEagle3(cfg)
    d.load_embedding(torch.randn(V, 32))
    g = torch.Generator().manual_seed(0)
    B, L = 3, 12
    ids = torch.randint(0, V, (B, L), generator=g)
    aux = torch.randn(B, L, 48, generator=g)
    logits = torch.full((B, L, V), -4.0)
    logits.scatter_(2, ids.roll(-1, 1)[..., None], 4.0)  # teacher at p predicts token p+1
    am, lm = torch.ones(B, L), torch.ones(B, L)
    ttt = Eagle3TTT(d, ttt_length=3)
    opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(150):
        loss, m = ttt(ids, am, lm, aux, logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(m["step_acc"][0]) > 0.9, m["step_acc"]
