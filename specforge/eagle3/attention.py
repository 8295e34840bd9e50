"""Attention backends for the training-time-test (TTT) unroll, as a registry.

At TTT step ``i`` the query at position ``j`` may attend to

* the step-0 keys ``k <= j`` that are real tokens (``attention_mask[k] == 1``; a query always sees its
  own position, so padded queries stay finite), and
* its own position ``j`` in steps ``1..i`` (the "diagonal").

A backend is called as ``backend(q, keys, values, attention_mask, scale) -> out`` with
``q [B,NH,L,D]``, ``keys``/``values`` lists of ``[B,KVH,L,D]`` (index 0 = step 0, then steps 1..i; keys
carry rotary), ``attention_mask [B,L]`` (1 = real token) or None, and returns ``out [B,NH,L,D]``.
Outputs at padded query positions are unspecified (finite) and never reach real positions.

Backends: ``eager`` (reference: materialises the masked ``L x L(i+1)`` scores), ``sdpa`` (default,
memory-lean: fused causal attention over step 0 returning its log-sum-exp, plus the diagonal terms as
per-position vectors, merged exactly), ``flex_attention`` (torch flex attention where it runs; on CPU,
where torch 2.13 has no flex backward, it falls back to ``sdpa`` and logs why once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from specforge.registry import Registry

logger = logging.getLogger(__name__)

BACKENDS: Registry[Callable[[], object]] = Registry("draft attention backend")
DEFAULT_BACKEND = "sdpa"


def register_attention_backend(name: str):
    """Class decorator: make a backend selectable as ``--draft-attention-backend name``."""
    return BACKENDS.register(name)


def available_attention_backends() -> list[str]:
    """Names of the registered backends."""
    return BACKENDS.names()


def get_attention_backend(name: str | None = None):
    """Instantiate a registered backend by name (None = the memory-lean default)."""
    return BACKENDS.get(name or DEFAULT_BACKEND)()


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B,KVH,S,D] -> [B,KVH*n_rep,S,D]`` (GQA key/value sharing)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _is_right_padded(attention_mask: torch.Tensor | None) -> bool:
    """True when a plain causal mask is exact for every real query (no padding before real tokens)."""
    if attention_mask is None:
        return True
    m = attention_mask.to(torch.int8)
    return bool((m[:, 1:] <= m[:, :-1]).all())


def step0_mask(attention_mask: torch.Tensor | None, L: int, device) -> torch.Tensor:
    """Bool ``[B|1,1,L,L]``: query j may see step-0 key k iff k <= j and (key is real or k == j)."""
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    if attention_mask is None:
        return causal[None, None]
    eye = torch.eye(L, dtype=torch.bool, device=device)
    return (causal & (attention_mask.bool()[:, None, :] | eye))[:, None]


def ttt_attention_mask(attention_mask: torch.Tensor | None, L: int, step: int, device) -> torch.Tensor:
    """Bool ``[B|1,1,L,L*(step+1)]`` over ``[step-0 keys | diagonal keys of steps 1..step]`` (True = may attend)."""
    m0 = step0_mask(attention_mask, L, device)
    diag = torch.eye(L, dtype=torch.bool, device=device)[None, None].expand(m0.shape[0], 1, L, L)
    return torch.cat([m0] + [diag] * step, dim=-1)


@register_attention_backend("eager")
class EagerAttention:
    """Reference backend: builds the full masked ``[B,NH,L,L*(i+1)]`` score matrix."""

    def __call__(self, q, keys, values, attention_mask, scale):
        _, NH, L, _ = q.shape
        n_rep = NH // keys[0].shape[1]
        K = _repeat_kv(torch.cat(keys, dim=2), n_rep)  # [B,NH,L*(i+1),D]
        V = _repeat_kv(torch.cat(values, dim=2), n_rep)
        scores = torch.matmul(q, K.transpose(-1, -2)) * scale  # [B,NH,L,L*(i+1)]
        mask = ttt_attention_mask(attention_mask, L, len(keys) - 1, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return torch.matmul(probs, V)


class _FlashWithLse(torch.autograd.Function):
    """Fused (flash) attention on CPU returning ``(out, lse)`` with gradients through both.

    torch's CPU flash kernel gives the log-sum-exp but treats it as non-differentiable. Its backward
    computes ``dS = P * (dP - rowsum(dO * O))``; the lse gradient adds ``g_lse * P``, i.e. it lowers the
    row sum by ``g_lse``. We pad q/k/v with a zero column (scores and outputs unchanged) and, in
    backward, set that column of O to 1 and of dO to ``-g_lse``: the row sum shifts exactly by
    ``-g_lse`` while ``dP = dO . v`` is untouched (v's extra column is zero).
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        # k/v arrive with KVH heads; they are expanded (GQA) here and again in backward, so only the
        # small originals are kept for backward.
        n_rep = q.shape[1] // k.shape[1]
        qa, ka, va = (F.pad(t, (0, 1)) for t in (q, _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qa, ka, va, 0.0, mask is None, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale, ctx.n_rep = mask, scale, n_rep
        return out[..., :-1], lse

    @staticmethod
    def backward(ctx, g_out, g_lse):
        q, k, v, out, lse = ctx.saved_tensors
        n_rep = ctx.n_rep
        qa, ka, va = (F.pad(t, (0, 1)) for t in (q, _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)))
        if g_out is None:
            g_out = torch.zeros_like(out[..., :-1])
        if g_lse is None:
            g_lse = torch.zeros_like(lse)
        g_aug = torch.cat([g_out, -g_lse.to(g_out.dtype)[..., None]], dim=-1)
        out_mod = out.clone()
        out_mod[..., -1] = 1.0
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            g_aug, qa, ka, va, out_mod, lse, 0.0, ctx.mask is None, attn_mask=ctx.mask, scale=ctx.scale)
        B, KVH, L, D = k.shape
        dk = dk[..., :-1].reshape(B, KVH, n_rep, L, D).sum(2)
        dv = dv[..., :-1].reshape(B, KVH, n_rep, L, D).sum(2)
        return dq[..., :-1], dk, dv, None, None


_warned: set[str] = set()


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


def causal_attention_with_lse(q, k, v, attention_mask, scale):
    """Step-0 attention ``q [B,NH,L,D]``, ``k/v [B,KVH,L,D]`` -> ``(out [B,NH,L,D], lse [B,NH,L] fp32)``.

    Uses the fused CPU kernel (never builds ``L x L`` scores) when possible; elsewhere (e.g. CUDA, where
    the ``flex_attention`` backend is the lean choice) it computes the scores explicitly.
    """
    L = q.shape[2]
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16):
        mask = None
        if not _is_right_padded(attention_mask):
            mask = torch.zeros(q.shape[0], 1, L, L, dtype=q.dtype, device=q.device)
            mask.masked_fill_(~step0_mask(attention_mask, L, q.device), float("-inf"))
        return _FlashWithLse.apply(q, k, v, mask, scale)
    _warn_once("sdpa-dense", "sdpa backend on %s builds the step-0 scores explicitly; "
               "use --draft-attention-backend flex_attention there for a lean run", q.device.type)
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~step0_mask(attention_mask, L, q.device), float("-inf")).float()
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse[..., None]).to(q.dtype), v)
    return out, lse


@register_attention_backend("sdpa")
class LeanAttention:
    """Memory-lean default: fused step-0 attention + diagonal terms as vectors, merged by log-sum-exp."""

    def __call__(self, q, keys, values, attention_mask, scale):
        B, NH, L, D = q.shape
        KVH = keys[0].shape[1]
        n_rep = NH // KVH
        out0, lse0 = causal_attention_with_lse(q, keys[0], values[0], attention_mask, scale)
        if len(keys) == 1:
            return out0
        # Diagonal scores: query j . key j of every later step, grouped by KV head (no repeat needed).
        qg = q.view(B, KVH, n_rep, L, D)
        kd = torch.stack(keys[1:], dim=2)  # [B,KVH,i,L,D]
        vd = torch.stack(values[1:], dim=2)
        d = torch.einsum("bgrld,bgild->bgrli", qg, kd) * scale  # [B,KVH,n_rep,L,i]
        logits = torch.cat([lse0.view(B, KVH, n_rep, L, 1), d.float()], dim=-1)
        w = torch.softmax(logits, dim=-1).to(q.dtype)  # exact merge weights of [step 0 | diagonal]
        out = w[..., :1] * out0.view(B, KVH, n_rep, L, D) + torch.einsum("bgrli,bgild->bgrld", w[..., 1:], vd)
        return out.reshape(B, NH, L, D)


_compiled_flex = None


@register_attention_backend("flex_attention")
class FlexAttention:
    """torch flex attention over ``[step-0 keys | diagonal keys]`` with a block mask (CUDA).

    torch 2.13 has no flex-attention backward on CPU, so on CPU this delegates to ``sdpa`` (same maths).
    """

    def __init__(self):
        self._lean = LeanAttention()

    def __call__(self, q, keys, values, attention_mask, scale):
        if q.device.type == "cpu":
            _warn_once("flex-cpu", "flex_attention has no backward on CPU in torch %s; using the "
                       "memory-lean 'sdpa' backend instead (same maths)", torch.__version__)
            return self._lean(q, keys, values, attention_mask, scale)
        global _compiled_flex
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        B, _, L, _ = q.shape
        valid = (attention_mask.bool() if attention_mask is not None
                 else torch.ones(B, L, dtype=torch.bool, device=q.device))

        def mask_mod(b, h, qi, kv):
            pos = kv % L
            step0 = (kv < L) & (kv <= qi) & (valid[b, pos] | (kv == qi))
            return step0 | ((kv >= L) & (pos == qi))

        block_mask = create_block_mask(mask_mod, B, None, L, L * len(keys), device=q.device)
        return _compiled_flex(q, torch.cat(keys, dim=2), torch.cat(values, dim=2),
                              block_mask=block_mask, scale=scale, enable_gqa=True)
