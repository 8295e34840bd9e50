"""TTT attention backends: the memory-lean ones equal the eager reference (outputs and gradients)."""

from __future__ import annotations

import logging

import pytest
import torch

from specforge.errors import SpecforgeError
from specforge.eagle3 import attention as A
from specforge.modeling.draft import available_attention_backends, get_attention_backend


def inputs(B, NH, KVH, L, D, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, NH, L, D, generator=g, requires_grad=True)
    ks = [(torch.randn(B, KVH, L, D, generator=g) * 2).requires_grad_() for _ in range(steps + 1)]
    vs = [torch.randn(B, KVH, L, D, generator=g, requires_grad=True) for _ in range(steps + 1)]
    return q, ks, vs


def run(name, q, ks, vs, am, D):
    for t in [q, *ks, *vs]:
        t.grad = None
    out = get_attention_backend(name)(q, ks, vs, am, D**-0.5)
    real = torch.ones(out.shape[0], out.shape[2]) if am is None else am.float()
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    # only real query positions count: padded ones are unspecified by contract
    (out * w * real[:, None, :, None]).sum().backward()
    return out.detach() * real[:, None, :, None], [t.grad.clone() for t in [q, *ks, *vs]]


@pytest.mark.parametrize("L", [1, 5, 33])
@pytest.mark.parametrize("steps", [0, 1, 3, 6])
@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("name", ["sdpa", "flex_attention"])
def test_lean_equals_eager(L, steps, padding, name):
    B, NH, KVH, D = 2, 6, 2, 8
    q, ks, vs = inputs(B, NH, KVH, L, D, steps)
    am = None
    if padding != "none" and L > 2:
        am = torch.ones(B, L, dtype=torch.long)
        if padding == "right":
            am[0, L - L // 3:] = 0
        else:
            am[1, :L // 3] = 0
    ref_out, ref_g = run("eager", q, ks, vs, am, D)
    out, g = run(name, q, ks, vs, am, D)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mask_hand_worked():
    am = torch.tensor([[0, 1, 1]])
    m = A.ttt_attention_mask(am, 3, 2, "cpu")[0, 0].int().tolist()
    # columns: step-0 keys 0..2 | step-1 keys 0..2 | step-2 keys 0..2
    assert m == [
        [1, 0, 0, 1, 0, 0, 1, 0, 0],  # padded query 0 sees only itself
        [0, 1, 0, 0, 1, 0, 0, 1, 0],  # step-0 key 0 is padding
        [0, 1, 1, 0, 0, 1, 0, 0, 1],
    ]


def test_lean_never_builds_quadratic_scores(monkeypatch):
    """The sdpa backend must not call the dense path on CPU (it would materialise L x L scores)."""
    calls = []
    orig = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda *a, **k: calls.append(1) or orig(*a, **k))
    q, ks, vs = inputs(1, 4, 2, 16, 8, 3)
    get_attention_backend("sdpa")(q, ks, vs, None, 8**-0.5)
    assert not calls


def test_registry_and_unknown_backend():
    assert {"eager", "sdpa", "flex_attention"} <= set(available_attention_backends())
    with pytest.raises(SpecforgeError, match="unknown draft attention backend 'nope'.*eager"):
        get_attention_backend("nope")

    @A.register_attention_backend("test-eager-alias")
    class Alias(A.EagerAttention):
        pass

    try:
        assert isinstance(get_attention_backend("test-eager-alias"), Alias)
    finally:
        A.BACKENDS.entries.pop("test-eager-alias")


def test_flex_on_cpu_falls_back_with_one_logged_reason(caplog):
    A._warned.discard("flex-cpu")
    q, ks, vs = inputs(1, 2, 1, 4, 8, 1)
    be = get_attention_backend("flex_attention")
    with caplog.at_level(logging.WARNING, logger=A.__name__):
        be(q, ks, vs, None, 0.3)
        be(q, ks, vs, None, 0.3)
    msgs = [r.getMessage() for r in caplog.records if "flex_attention" in r.getMessage()]
    assert len(msgs) == 1 and "CPU" in msgs[0]
