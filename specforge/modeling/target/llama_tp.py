"""Tensor-parallel Llama-family targets (Llama, Qwen2, Qwen3): pure maths on the seed's parallel layers.

Megatron layout: q/k/v and gate/up are :class:`ColumnParallelLinear` (each rank holds ``heads/tp``
query heads, ``kv_heads/tp`` KV heads and ``intermediate/tp`` MLP channels), o_proj and down_proj
are :class:`RowParallelLinear` (partial sums all-reduced inside the layer), so every rank ends each
decoder layer with the same full hidden state. Embedding, final norm and lm_head are replicated:
the draft needs the whole embedding anyway and the teacher needs full-vocab logits on every rank.

Parameter names equal the HF checkpoint's (``model.layers.0.self_attn.q_proj.weight`` ...), so
``load_weights`` maps safetensors names straight onto modules. The family differences:

* Llama: q/k/v/o bias = ``config.attention_bias``, MLP bias = ``config.mlp_bias``;
* Qwen2: q/k/v bias, no o_proj bias;
* Qwen3: bias = ``config.attention_bias`` and a per-head RMSNorm on q and k (``q_norm``/``k_norm``).

Shapes: ``input_ids [B,L]``, ``attention_mask [B,L]`` (1 = token, 0 = padding) -> hidden ``[B,L,H]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from specforge.layers.linear import ColumnParallelLinear, RowParallelLinear

from .base import DistributedTargetModel


@dataclass
class DecoderOutput:
    """``last_hidden_state [B,L,H]`` (after the final norm) and, when asked, ``hidden_states``: L+1
    tensors ``[B,L,H]`` where entry i is the input of layer i and the last one is the normed output
    (the same convention as HF ``output_hidden_states``)."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class FamilySpec:
    """What differs between the Llama-like families."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False


class TPAttention(nn.Module):
    def __init__(self, config, spec: FamilySpec, tp_group=None):
        super().__init__()
        H, nh = config.hidden_size, config.num_attention_heads
        nkv = getattr(config, "num_key_value_heads", None) or nh
        self.head_dim = getattr(config, "head_dim", None) or H // nh
        self.q_proj = ColumnParallelLinear(H, nh * self.head_dim, bias=spec.qkv_bias, tp_group=tp_group)
        self.k_proj = ColumnParallelLinear(H, nkv * self.head_dim, bias=spec.qkv_bias, tp_group=tp_group)
        self.v_proj = ColumnParallelLinear(H, nkv * self.head_dim, bias=spec.qkv_bias, tp_group=tp_group)
        self.o_proj = RowParallelLinear(nh * self.head_dim, H, bias=spec.o_bias, tp_group=tp_group)
        if spec.qk_norm:
            self.q_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.qk_norm = spec.qk_norm

    def forward(self, x: torch.Tensor, cos_sin, mask: torch.Tensor) -> torch.Tensor:
        """``x [B,L,H]``, ``mask [B,1,L,L]`` bool (True = may attend) -> ``[B,L,H]`` (already all-reduced)."""
        B, L, _ = x.shape
        shape = (B, L, -1, self.head_dim)  # -1 = this rank's heads
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B,h,L,d]
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class TPMLP(nn.Module):
    def __init__(self, config, spec: FamilySpec, tp_group=None):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.gate_proj = ColumnParallelLinear(H, I, bias=spec.mlp_bias, tp_group=tp_group)
        self.up_proj = ColumnParallelLinear(H, I, bias=spec.mlp_bias, tp_group=tp_group)
        self.down_proj = RowParallelLinear(I, H, bias=spec.mlp_bias, tp_group=tp_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TPDecoderLayer(nn.Module):
    def __init__(self, config, spec: FamilySpec, tp_group=None):
        super().__init__()
        self.self_attn = TPAttention(config, spec, tp_group)
        self.mlp = TPMLP(config, spec, tp_group)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, cos_sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TPDecoder(nn.Module):
    """The decoder stack (``model.*`` in HF names); called like HF's base model by the EAGLE-3 wrapper."""

    def __init__(self, config, spec: FamilySpec, tp_group=None):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TPDecoderLayer(config, spec, tp_group) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)  # inv_freq: a non-persistent fp32 buffer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, use_cache: bool = False) -> DecoderOutput:
        B, L = input_ids.shape
        x = self.embed_tokens(input_ids)
        pos = torch.arange(L, device=x.device).unsqueeze(0).expand(B, L)
        cos_sin = self.rotary_emb(x, pos)
        mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()[None, None]  # [1,1,L,L]
        if attention_mask is not None:
            # keys that are padding are hidden; every query still sees itself (no all-masked row -> NaN)
            mask = (mask & attention_mask.bool()[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=x.device)
        states = [x]
        for layer in self.layers:
            x = layer(x, cos_sin, mask)
            states.append(x)
        x = self.norm(x)
        states[-1] = x
        return DecoderOutput(x, tuple(states) if output_hidden_states else None)


class LlamaTPForCausalLM(nn.Module, DistributedTargetModel):
    """Tensor-parallel Llama causal LM. ``forward(input_ids [B,L]) -> logits [B,L,V]``."""

    base_model_prefix = "model"

    @staticmethod
    def family(config) -> FamilySpec:
        bias = bool(getattr(config, "attention_bias", False))
        return FamilySpec(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(config, "mlp_bias", False)))

    def __init__(self, config, tp_group=None):
        super().__init__()
        self.config = config
        self.model = TPDecoder(config, self.family(config), tp_group)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.model(input_ids, attention_mask).last_hidden_state)

    def load_weights(self, state_dict) -> None:
        """HF names map 1:1 onto ours; each parallel layer keeps its shard (see ``load_hf_weights``)."""
        self.load_hf_weights(state_dict)


class Qwen2TPForCausalLM(LlamaTPForCausalLM):
    """Tensor-parallel Qwen2 (q/k/v carry a bias, o_proj does not)."""

    @staticmethod
    def family(config) -> FamilySpec:
        return FamilySpec(qkv_bias=True)


class Qwen3TPForCausalLM(LlamaTPForCausalLM):
    """Tensor-parallel Qwen3 (per-head q/k RMSNorm)."""

    @staticmethod
    def family(config) -> FamilySpec:
        bias = bool(getattr(config, "attention_bias", False))
        return FamilySpec(qkv_bias=bias, o_bias=bias, qk_norm=True)
