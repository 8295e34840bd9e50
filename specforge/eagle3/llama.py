"""``LlamaForCausalLMEagle3``: the EAGLE-3 draft with SGLang/vLLM weight names (docs/EAGLE3.md sections 1 and 4).

One Llama decoder layer (``midlayer``) whose attention reads ``cat(input_layernorm(embeds),
hidden_norm(hidden))`` (width 2H) and whose residual is the un-normed ``hidden``; ``fc`` projects the
three concatenated target states; ``norm`` + ``lm_head`` give draft-vocab logits. Norms, rotary, MLP
and activation are transformers' own Llama modules. Pure maths.

Options (:class:`specforge.eagle3.config.Eagle3Config`): ``norm_before_fc`` (``input_norm`` over the
concatenated aux states ``[3*Ht]``), ``fc_norm`` (``fc_norm.{0,1,2}``, one per aux state ``[Ht]``),
``norm_output`` (the state fed forward, and read by the head, is ``norm(out)``), ``num_hidden_layers > 1``
(``layers.{1..}``: plain Llama decoder layers over H after ``midlayer``; their keys/values are stacked
after the first layer's along the head axis of the decode cache).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from specforge.eagle3.base import Eagle3DraftModel, KVCache
from specforge.eagle3.config import NUM_AUX_STATES, Eagle3Config


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class Eagle3Attention(nn.Module):
    """Llama attention with 2H-wide q/k/v inputs (H-wide in later layers); keys/values are exposed for the
    TTT and decode caches."""

    def __init__(self, config, in_features: int | None = None):
        super().__init__()
        H, self.head_dim = config.hidden_size, _head_dim(config)
        n_in = 2 * H if in_features is None else in_features
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        bias = getattr(config, "attention_bias", False)
        self.q_proj = nn.Linear(n_in, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(n_in, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(n_in, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, H, bias=bias)
        self.scaling = self.head_dim**-0.5

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """``x [B,T,2H]`` -> rotated ``q [B,NH,T,D]``, ``k [B,KVH,T,D]`` and ``v [B,KVH,T,D]``."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def out(self, attn: torch.Tensor) -> torch.Tensor:
        """``attn [B,NH,T,D] -> [B,T,H]`` through ``o_proj``."""
        B, _, T, _ = attn.shape
        return self.o_proj(attn.transpose(1, 2).reshape(B, T, -1))


class Eagle3DecoderLayer(nn.Module):
    """A draft decoder layer: the first (``midlayer``) reads ``cat(embeds, hidden)``; a later one (``first=False``)
    is a plain Llama layer over ``hidden``."""

    def __init__(self, config, first: bool = True):
        super().__init__()
        H, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Eagle3Attention(config, None if first else H)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(H, eps=eps)
        if first:
            self.hidden_norm = LlamaRMSNorm(H, eps=eps)
        self.post_attention_layernorm = LlamaRMSNorm(H, eps=eps)
        self.recompute_mlp = getattr(config, "recompute_mlp", True)  # training memory knob, not a weight

    def attn_inputs(self, input_embeds, hidden, cos, sin):
        """Normed ``cat(embeds, hidden) [B,T,2H]`` (first layer) or ``hidden [B,T,H]`` -> ``(q, k, v)``
        (see :meth:`Eagle3Attention.qkv`)."""
        if input_embeds is None:
            return self.self_attn.qkv(self.input_layernorm(hidden), cos, sin)
        x = torch.cat([self.input_layernorm(input_embeds), self.hidden_norm(hidden)], dim=-1)
        return self.self_attn.qkv(x, cos, sin)

    def _mlp_block(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(self.post_attention_layernorm(h))

    def finish(self, attn: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``attn [B,NH,T,D]``, residual ``hidden [B,T,H]`` -> pre-norm layer output ``[B,T,H]``."""
        h = hidden + self.self_attn.out(attn)
        if self.recompute_mlp and torch.is_grad_enabled() and h.requires_grad:
            # The SwiGLU keeps ~4 x intermediate floats per token for backward, per TTT step - the
            # largest activation; recomputing it costs ~7% of a step and saves ~40% of the memory.
            return checkpoint(self._mlp_block, h, use_reentrant=False)
        return self._mlp_block(h)


class LlamaForCausalLMEagle3(Eagle3DraftModel):
    """EAGLE-3 Llama draft. Config fields: the usual LlamaConfig ones plus ``draft_vocab_size``,
    ``target_hidden_size`` (default ``hidden_size``) and the options of the module docstring."""

    config_class: Any = LlamaConfig

    def __init__(self, config, quant_config=None) -> None:
        super().__init__(config)
        e3 = Eagle3Config.of(config)
        H, V, Vd, Ht = e3.hidden_size, e3.vocab_size, e3.draft_vocab_size, e3.target_hidden_size
        self.embed_tokens = nn.Embedding(V, H, getattr(config, "pad_token_id", None))
        self.embed_tokens.weight.requires_grad_(False)  # the target's, frozen
        self.fc = nn.Linear(NUM_AUX_STATES * Ht, H, bias=False)
        self.midlayer = Eagle3DecoderLayer(config)
        self.norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(H, Vd, bias=False)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        # Identity mapping of the first Vd target ids until a real draft vocab is loaded.
        self.register_buffer("d2t", torch.zeros(Vd, dtype=torch.long))
        t2d = torch.zeros(V, dtype=torch.bool)
        t2d[:Vd] = True
        self.register_buffer("t2d", t2d)
        # Options come last so a plain draft's modules (and its seeded initialisation) stay as they were.
        eps = config.rms_norm_eps
        self.input_norm = LlamaRMSNorm(NUM_AUX_STATES * Ht, eps=eps) if e3.norm_before_fc else None
        self.fc_norm = nn.ModuleList(LlamaRMSNorm(Ht, eps=eps) for _ in range(NUM_AUX_STATES)) if e3.fc_norm else None
        self.norm_output = e3.norm_output
        self.layers = nn.ModuleDict({str(i): Eagle3DecoderLayer(config, first=False)
                                     for i in range(1, e3.num_hidden_layers)})
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
        self.embed_tokens.weight.normal_(0.0, std)

    def project_hidden_states(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """``[B,T,3*Ht] -> [B,T,H]`` (after the optional aux-state norms)."""
        if self.input_norm is not None:
            aux_hidden = self.input_norm(aux_hidden)
        if self.fc_norm is not None:
            parts = aux_hidden.chunk(NUM_AUX_STATES, dim=-1)
            aux_hidden = torch.cat([n(x) for n, x in zip(self.fc_norm, parts)], dim=-1)
        return self.fc(aux_hidden)

    def _head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        # with norm_output the steps already return norm(out): the head must not norm twice
        return hidden if self.norm_output else self.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[...,H] -> [...,Vd]``."""
        return self.lm_head(self._head_input(hidden))

    def logits_parts(self, hidden: torch.Tensor):
        """``(norm(hidden) [...,H], lm_head.weight [Vd,H])``."""
        return self._head_input(hidden), self.lm_head.weight

    def _step_output(self, out: torch.Tensor) -> torch.Tensor:
        # in out's dtype: under autocast the norm's fp32 weight would promote it to fp32, and the next step's
        # keys would no longer match the cached ones
        return self.norm(out).to(out.dtype) if self.norm_output else out

    def _rope(self, x: torch.Tensor, position_ids: torch.Tensor):
        return self.rotary_emb(x, position_ids)

    def decode_step(self, input_embeds, hidden, position_ids, past_kv: KVCache | None = None, attn_mask=None):
        """See :meth:`Eagle3DraftModel.decode_step`; attention via SDPA (GQA native). With several layers the
        cache holds each layer's keys/values side by side on the head axis ``[B, layers*KVH, S, D]``."""
        cos, sin = self._rope(hidden, position_ids)
        layers: list[Eagle3DecoderLayer] = [self.midlayer, *self.layers.values()]  # type: ignore[list-item]
        past = [None] * len(layers) if past_kv is None else list(zip(past_kv[0].chunk(len(layers), 1),
                                                                      past_kv[1].chunk(len(layers), 1)))
        new_k, new_v = [], []
        h, embeds = hidden, input_embeds
        for layer, pkv in zip(layers, past):
            q, k, v = layer.attn_inputs(embeds, h, cos, sin)
            keys, values = (k, v) if pkv is None else (torch.cat([pkv[0], k], 2), torch.cat([pkv[1], v], 2))
            B, T, S = q.shape[0], q.shape[2], keys.shape[2] - q.shape[2]
            if attn_mask is None:  # causal over past + new
                attn_mask = torch.ones(T, S + T, dtype=torch.bool, device=q.device).tril(S)[None].expand(B, T, S + T)
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask[:, None],
                                                  scale=layer.self_attn.scaling, enable_gqa=True)
            h, embeds = layer.finish(attn, h), None
            new_k.append(k)
            new_v.append(v)
        kv = (new_k[0], new_v[0]) if len(layers) == 1 else (torch.cat(new_k, 1), torch.cat(new_v, 1))
        return self._step_output(h), kv

    def ttt_step(self, input_embeds, hidden, position_ids, cache, attention_mask, backend):
        """See :meth:`Eagle3DraftModel.ttt_step`. One layer: ``cache`` items are ``(k, v)``; several: a list
        of ``(k, v)`` per layer."""
        cos, sin = self._rope(hidden, position_ids)
        q, k, v = self.midlayer.attn_inputs(input_embeds, hidden, cos, sin)
        if not self.layers:
            cache.append((k, v))
            attn = backend(q, [c[0] for c in cache], [c[1] for c in cache], attention_mask,
                           self.midlayer.self_attn.scaling)
            return self._step_output(self.midlayer.finish(attn, hidden))
        step = [(k, v)]
        cache.append(step)
        layers: list[Eagle3DecoderLayer] = [self.midlayer, *self.layers.values()]  # type: ignore[list-item]
        h = hidden
        for j, layer in enumerate(layers):
            if j:
                q, k, v = layer.attn_inputs(None, h, cos, sin)
                step.append((k, v))
            attn = backend(q, [c[j][0] for c in cache], [c[j][1] for c in cache], attention_mask,
                           layer.self_attn.scaling)
            h = layer.finish(attn, h)
        return self._step_output(h)
