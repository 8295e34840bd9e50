"""The EAGLE-3 draft layer against transformers' own Llama modules, decode_step, and weight names."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from specforge.errors import SpecforgeError
from specforge.modeling.draft import LlamaForCausalLMEagle3, get_attention_backend

V, H, NH, KVH, D = 120, 48, 4, 2, 16


def cfg(**kw):
    base = dict(architectures=["LlamaForCausalLMEagle3"], vocab_size=V, draft_vocab_size=50, hidden_size=H,
                intermediate_size=96, num_attention_heads=NH, num_key_value_heads=KVH, head_dim=D,
                num_hidden_layers=1, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=5000.0,
                target_hidden_size=40)
    base.update(kw)
    return LlamaConfig(**base)


@pytest.fixture
def draft():
    torch.manual_seed(0)
    d = LlamaForCausalLMEagle3(cfg()).eval()
    with torch.no_grad():  # non-trivial norm weights so a swapped norm would show
        for n, p in d.named_parameters():
            if n.endswith("layernorm.weight") or n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    d.load_embedding(torch.randn(V, H))
    return d


def hf_reference(d, embeds, hidden, position_ids):
    """The same layer built from transformers' LlamaAttention / LlamaMLP / LlamaRMSNorm (eager, causal)."""
    c = cfg(hidden_size=2 * H)  # attention reads the 2H-wide concatenation
    c._attn_implementation = "eager"
    attn = LlamaAttention(c, layer_idx=0)
    attn.o_proj = nn.Linear(NH * D, H, bias=False)  # ... and writes back to width H
    src = d.midlayer.self_attn
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(attn, n).load_state_dict(getattr(src, n).state_dict())
    mlp = LlamaMLP(cfg())
    mlp.load_state_dict(d.midlayer.mlp.state_dict())
    norms = {}
    for n in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
        norms[n] = LlamaRMSNorm(H, eps=1e-5)
        norms[n].load_state_dict(getattr(d.midlayer, n).state_dict())
    rope = LlamaRotaryEmbedding(cfg())
    B, L, _ = embeds.shape
    x = torch.cat([norms["input_layernorm"](embeds), norms["hidden_norm"](hidden)], -1)
    mask = torch.full((L, L), float("-inf")).triu(1)[None, None].expand(B, 1, L, L)
    a, _ = attn(x, position_embeddings=rope(x, position_ids), attention_mask=mask)
    h = hidden + a
    return h + mlp(norms["post_attention_layernorm"](h))


def test_weight_names_and_shapes(draft):
    sd = draft.state_dict_for_save()
    expected = {
        "midlayer.self_attn.q_proj.weight": (NH * D, 2 * H), "midlayer.self_attn.k_proj.weight": (KVH * D, 2 * H),
        "midlayer.self_attn.v_proj.weight": (KVH * D, 2 * H), "midlayer.self_attn.o_proj.weight": (H, NH * D),
        "midlayer.mlp.gate_proj.weight": (96, H), "midlayer.mlp.up_proj.weight": (96, H),
        "midlayer.mlp.down_proj.weight": (H, 96), "midlayer.input_layernorm.weight": (H,),
        "midlayer.hidden_norm.weight": (H,), "midlayer.post_attention_layernorm.weight": (H,),
        "fc.weight": (H, 3 * 40), "norm.weight": (H,), "lm_head.weight": (50, H), "d2t": (50,), "t2d": (V,),
    }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sd["d2t"].dtype == torch.int64 and sd["t2d"].dtype == torch.bool
    assert "embed_tokens.weight" in draft.state_dict()
    assert not draft.embed_tokens.weight.requires_grad


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_step0_matches_transformers_llama_modules(draft, backend):
    B, L = 2, 9
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, L), generator=g)
    hidden = draft.project_hidden_states(torch.randn(B, L, 120, generator=g))
    pos = torch.arange(L)[None].expand(B, L) + 3
    emb = draft.embed_input_ids(ids)
    ref = hf_reference(draft, emb, hidden, pos)
    out = draft.ttt_step(emb, hidden, pos, [], None, get_attention_backend(backend))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    dec, (k, v) = draft.decode_step(emb, hidden, pos)
    torch.testing.assert_close(dec, ref, rtol=1e-5, atol=1e-5)
    assert k.shape == (B, KVH, L, D) and v.shape == (B, KVH, L, D)
    torch.testing.assert_close(draft.compute_logits(out), draft.lm_head(draft.norm(out)))


def test_decode_step_token_by_token_equals_full_sequence(draft):
    B, L = 2, 7
    g = torch.Generator().manual_seed(2)
    emb = draft.embed_input_ids(torch.randint(0, V, (B, L), generator=g))
    hidden = torch.randn(B, L, H, generator=g)
    pos = torch.arange(L)[None].expand(B, L)
    full, (kf, vf) = draft.decode_step(emb, hidden, pos)
    past, outs = None, []
    for t in range(L):
        o, (k, v) = draft.decode_step(emb[:, t:t + 1], hidden[:, t:t + 1], pos[:, t:t + 1], past)
        past = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(past[0], kf, rtol=1e-5, atol=1e-5)
    # two chunks: prefill 4, then 3 new tokens with the default causal-over-past mask
    o1, kv1 = draft.decode_step(emb[:, :4], hidden[:, :4], pos[:, :4])
    o2, _ = draft.decode_step(emb[:, 4:], hidden[:, 4:], pos[:, 4:], kv1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), full, rtol=1e-5, atol=1e-5)


def test_decode_step_explicit_tree_mask(draft):
    """Two sibling candidates that must not see each other equal two separate one-token steps."""
    g = torch.Generator().manual_seed(3)
    emb, hidden = torch.randn(1, 5, H, generator=g), torch.randn(1, 5, H, generator=g)
    pos = torch.arange(5)[None]
    _, kv = draft.decode_step(emb[:, :3], hidden[:, :3], pos[:, :3])
    mask = torch.tensor([[[True, True, True, True, False], [True, True, True, False, True]]])
    both, _ = draft.decode_step(emb[:, 3:], hidden[:, 3:], torch.tensor([[3, 3]]), kv, mask)
    a, _ = draft.decode_step(emb[:, 3:4], hidden[:, 3:4], torch.tensor([[3]]), kv)
    b, _ = draft.decode_step(emb[:, 4:5], hidden[:, 4:5], torch.tensor([[3]]), kv)
    torch.testing.assert_close(both, torch.cat([a, b], 1), rtol=1e-5, atol=1e-5)


def test_state_dict_roundtrip_and_errors(draft):
    other = LlamaForCausalLMEagle3(cfg())
    other.load_checkpoint_state(draft.state_dict_for_save())
    for k, v in draft.state_dict_for_save().items():
        torch.testing.assert_close(other.state_dict()[k], v)
    bad = dict(draft.state_dict_for_save())
    del bad["lm_head.weight"]
    with pytest.raises(SpecforgeError, match="missing.*lm_head"):
        other.load_checkpoint_state(bad)
    bad = copy.copy(draft.state_dict_for_save())
    bad["model.extra"] = torch.zeros(1)
    with pytest.raises(SpecforgeError, match="unexpected"):
        other.load_checkpoint_state(bad)
    bad = dict(draft.state_dict_for_save())
    bad["fc.weight"] = torch.zeros(H, 3 * H)
    with pytest.raises(SpecforgeError, match="shape"):
        other.load_checkpoint_state(bad)
    with pytest.raises(SpecforgeError, match="embedding"):
        other.load_embedding(torch.zeros(V + 1, H))
