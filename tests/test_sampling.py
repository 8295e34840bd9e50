"""The accept/resample rule keeps the target's distribution (total-variation bounds, fixed seeds)."""

from __future__ import annotations

import pytest
import torch

from specforge.inference.sampling import greedy_tokens, recursive_rejection, verify_tree
from specforge.inference.tree import DraftTree


def _tv(counts: torch.Tensor, p: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - p).abs().sum())


P = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.15, 0.05])


def test_point_mass_candidates_follow_target():
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(6000):
        _, tok = recursive_rejection(P, [3, 0, 5], None, gen)
        counts[tok] += 1
    assert _tv(counts, P) < 0.03


def test_sampled_candidates_follow_target():
    # SpecInfer: candidates drawn i.i.d. from q, accepted with min(1, p/q), residual max(p - q, 0).
    gen = torch.Generator().manual_seed(1)
    q = torch.tensor([0.3, 0.1, 0.3, 0.1, 0.1, 0.1])
    counts = torch.zeros(6)
    for _ in range(6000):
        cands = torch.multinomial(q, 2, replacement=True, generator=gen).tolist()
        _, tok = recursive_rejection(P, cands, q.expand(2, 6), gen)
        counts[tok] += 1
    assert _tv(counts, P) < 0.03


def test_rule_is_not_vacuous():
    # Accepting every candidate outright would give the candidate's distribution, far from P.
    counts = torch.zeros(6)
    counts[3] = 1.0
    assert _tv(counts, P) > 0.5


def test_tree_verification_first_and_second_token_distribution():
    # Root with children 1 and 2; node 1 has child 4. Target logits per node, temperature 0.7.
    tree = DraftTree(tokens=torch.tensor([[0, 1, 2, 4]]), parents=torch.tensor([[-1, 0, 0, 1]]),
                     depths=torch.tensor([[0, 1, 1, 2]]), scores=torch.tensor([[0.0, -0.1, -0.5, -0.3]]))
    torch.manual_seed(3)
    logits = torch.randn(1, 4, 6) * 2
    temp = 0.7
    p = torch.softmax(logits / temp, -1)[0]
    gen = torch.Generator().manual_seed(2)
    first, second_after_1 = torch.zeros(6), torch.zeros(6)
    for _ in range(3000):
        path, bonus = verify_tree(tree, logits, temp, gen)
        toks = [tree.tokens[0, c].item() for c in path[0][1:]] + bonus
        first[toks[0]] += 1
        if toks[0] == 1:
            second_after_1[toks[1]] += 1
    assert _tv(first, p[0]) < 0.04
    # After accepting node 1 the next token must follow the target's distribution at node 1.
    assert _tv(second_after_1, p[1]) < 0.07


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_greedy_tokens_is_the_first_maximum_in_every_dtype(dtype):
    # Coarse values make ties common: the pick must be the first maximal index, as argmax documents.
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-4, 4, (3, 5, 257), generator=g).to(dtype)
    got = greedy_tokens(logits)
    rows = logits.float().reshape(-1, 257).tolist()
    want = [row.index(max(row)) for row in rows]
    assert got.dtype == torch.int64 and got.shape == (3, 5) and got.reshape(-1).tolist() == want
