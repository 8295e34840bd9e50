"""The EAGLE-3.1 options and later layers of ``LlamaForCausalLMEagle3`` against independent references:
a hand-written RMS norm for ``norm_before_fc`` / ``fc_norm``, transformers' own ``LlamaDecoderLayer`` for the
layers after the first, and the TTT step against the decode step (two attention code paths)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from specforge.eagle3.attention import get_attention_backend
from specforge.eagle3.llama import LlamaForCausalLMEagle3

H, HT, EPS = 32, 48, 1e-6


def draft(**over):
    kw = dict(vocab_size=300, hidden_size=H, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=EPS,
              tie_word_embeddings=False)
    cfg = LlamaConfig(**{**kw, **over})
    cfg.draft_vocab_size, cfg.target_hidden_size = 40, HT
    torch.manual_seed(0)
    model = LlamaForCausalLMEagle3(cfg).eval()
    with torch.no_grad():  # norms away from their all-ones init, so a skipped norm shows
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or "fc_norm" in n or "layernorm" in n:
                p.uniform_(0.5, 1.5)
    return model


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def test_norm_before_fc_is_one_norm_over_the_concatenation():
    m = draft(norm_before_fc=True)
    aux = torch.randn(2, 5, 3 * HT)
    torch.testing.assert_close(m.project_hidden_states(aux), rms(aux, m.input_norm.weight) @ m.fc.weight.T)


def test_fc_norm_is_one_norm_per_aux_state():
    m = draft(fc_norm=True)
    aux = torch.randn(2, 5, 3 * HT)
    want = torch.cat([rms(x, n.weight) for x, n in zip(aux.split(HT, -1), m.fc_norm)], -1) @ m.fc.weight.T
    torch.testing.assert_close(m.project_hidden_states(aux), want)


def test_norm_output_feeds_the_normed_state_and_the_head_norms_once():
    plain, normed = draft(), draft(norm_output=True)
    normed.load_state_dict(plain.state_dict())
    emb, hid = torch.randn(1, 6, H), torch.randn(1, 6, H)
    pos = torch.arange(6)[None]
    out, _ = plain.decode_step(emb, hid, pos)
    out_n, _ = normed.decode_step(emb, hid, pos)
    torch.testing.assert_close(out_n, rms(out, plain.norm.weight))
    torch.testing.assert_close(normed.compute_logits(out_n), plain.compute_logits(out))


def test_later_layers_are_plain_llama_decoder_layers():
    one, two = draft(), draft(num_hidden_layers=2)
    two_state = two.state_dict()
    one.load_state_dict({k: v for k, v in two_state.items() if not k.startswith("layers.")})
    ref = LlamaDecoderLayer(two.config, layer_idx=1).eval()
    ref.load_state_dict({k[len("layers.1."):]: v for k, v in two_state.items() if k.startswith("layers.1.")})
    emb, hid = torch.randn(2, 7, H), torch.randn(2, 7, H)
    pos = torch.arange(7)[None].expand(2, 7)
    first, _ = one.decode_step(emb, hid, pos)
    causal = torch.full((7, 7), float("-inf")).triu(1)[None, None].expand(2, 1, 7, 7)
    with torch.no_grad():
        want = ref(first, attention_mask=causal, position_ids=pos, position_embeddings=one.rotary_emb(first, pos))
        got, (k, v) = two.decode_step(emb, hid, pos)
    want = want[0] if isinstance(want, tuple) else want
    torch.testing.assert_close(got, want)
    assert k.shape == (2, 2 * 2, 7, 8)  # both layers' keys side by side on the head axis


@pytest.mark.parametrize("over", [{}, {"norm_before_fc": True}, {"fc_norm": True}, {"norm_output": True},
                                  {"num_hidden_layers": 3}], ids=lambda o: next(iter(o), "plain"))
def test_ttt_steps_match_decoding_with_the_same_attention(over):
    """TTT step 0 = a causal decode pass; step 1 = each query attending to the step-0 prefix plus itself,
    which the decode step reproduces with an explicit mask over the concatenated keys."""
    m = draft(**over)
    L = 6
    emb0, emb1 = torch.randn(1, L, H), torch.randn(1, L, H)
    hid = m.project_hidden_states(torch.randn(1, L, 3 * HT))
    pos = torch.arange(L)[None]
    cache: list = []
    with torch.no_grad():
        s0 = m.ttt_step(emb0, hid, pos, cache, None, get_attention_backend("eager"))
        s1 = m.ttt_step(emb1, s0, pos + 1, cache, None, get_attention_backend("eager"))
        d0, kv0 = m.decode_step(emb0, hid, pos)
        mask = torch.cat([torch.ones(L, L, dtype=torch.bool).tril(), torch.eye(L, dtype=torch.bool)], 1)[None]
        d1, _ = m.decode_step(emb1, d0, pos + 1, kv0, mask)
    torch.testing.assert_close(s0, d0)
    torch.testing.assert_close(s1, d1)


@pytest.mark.parametrize("over", [{}, {"norm_before_fc": True}, {"fc_norm": True}, {"norm_output": True},
                                  {"norm_output": True, "num_hidden_layers": 2}],
                         ids=lambda o: "+".join(o) or "plain")
def test_ttt_unroll_trains_under_bf16_autocast_like_in_fp32(over):
    """``train --dtype bfloat16`` keeps fp32 master weights and runs the unroll under autocast: every option
    must keep the state fed forward in one dtype (a norm's fp32 output must not meet bf16 cached keys) and give
    the fp32 loss and gradients to bf16 accuracy."""
    from specforge.eagle3.ttt import Eagle3TTT

    m = draft(**over).train()
    B, L = 2, 9
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (B, L), generator=g)
    aux = torch.randn(B, L, 3 * HT, generator=g)
    logits = torch.randn(B, L, 300, generator=g) * 3
    logits[..., :40] += 4  # teacher argmax inside the 40-token draft vocab
    loss_mask = torch.ones(B, L, dtype=torch.long)
    ttt = Eagle3TTT(m, ttt_length=3)  # the trainer's default attention

    def run():
        m.zero_grad()
        loss, _ = ttt(ids, None, loss_mask, aux, logits)
        loss.backward()
        return loss.detach(), m.fc.weight.grad.clone()

    loss32, grad32 = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, grad16 = run()
    assert torch.isfinite(loss16)
    torch.testing.assert_close(loss16, loss32, rtol=3e-2, atol=3e-2)
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), 0) > 0.98
