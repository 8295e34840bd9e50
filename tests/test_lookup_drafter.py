"""EAGLE-3 + prompt lookup (LookupDrafter): exact greedy output, real lookups, and lazy commits."""

from __future__ import annotations

import pytest
import torch

from specforge.inference.decoder import SpecConfig, SpeculativeDecoder
from specforge.inference.drafters import Eagle3Drafter, LookupDrafter
from tests.test_decoder import eagle_draft, target  # noqa: F401  (shared fixtures: tiny target + draft)

# Prompts with repeats, so that lookup fires on the prompt as well as on the (loopy) greedy output.
PROMPTS = [[5, 17, 33, 9, 100, 5, 17, 33, 9], [7, 8, 9], [300, 301, 302, 303, 300, 301, 302]]
N = 24
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


def test_lookup_finds_the_most_recent_longest_match():
    d = LookupDrafter(None, max_ngram=3, min_ngram=2, max_tokens=3)
    assert d.lookup([1, 2, 3, 4, 5, 2, 3]) == [4, 5, 2]  # "2 3" occurred at 1: continue with 4 5 2
    assert d.lookup([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 2, 3]) == [7, 8, 2]  # most recent "2 3" wins
    assert d.lookup([9, 1, 2, 3, 5, 0, 1, 2, 3]) == [5, 0, 1]  # the 3-gram "1 2 3" matches
    assert d.lookup([1, 2, 3, 4]) == []  # no repeated n-gram
    assert d.lookup([4, 5, 6, 5]) == []  # a 1-gram repeat is below min_ngram
    assert LookupDrafter(None, min_ngram=1).lookup([4, 5, 6, 5]) == [6, 5]
    with pytest.raises(ValueError, match="min_ngram"):
        LookupDrafter(None, max_ngram=1, min_ngram=2)


@pytest.mark.parametrize("conf", [(3, 1, 4), (5, 3, 6)], ids=lambda c: "/".join(map(str, c)))
@pytest.mark.parametrize("with_draft", [True, False], ids=["eagle3+lookup", "lookup"])
@pytest.mark.parametrize("rows", [[0], [0, 1, 2]], ids=["b1", "b3"])
def test_greedy_output_equals_generate(target, eagle_draft, conf, with_draft, rows):
    prompts = [PROMPTS[r] for r in rows]
    drafter = LookupDrafter(Eagle3Drafter(eagle_draft) if with_draft else None)
    cfg = SpecConfig(*conf, max_new_tokens=N, eos_token_ids=(2,))
    outs, st = SpeculativeDecoder(target, drafter, cfg, aux_layer_ids=[1, 2, 3]).generate(prompts)
    for out, p in zip(outs, prompts):
        ref = target.generate(torch.tensor([p]), max_new_tokens=N, do_sample=False, eos_token_id=2)[0, len(p):]
        assert out == ref.tolist()
    assert drafter.lookup_steps + drafter.model_steps == st.verify_calls
    assert drafter.lookup_rows > 0  # the prompts repeat themselves: lookup did propose
    if conf[1] == 1:
        assert drafter.lookup_steps > 0  # chains where every row had a match skip the draft model
    if with_draft and conf[1] == 1 and rows == [0]:
        assert drafter.model_steps > 0  # and the draft drafted where lookup had nothing
    # Lookup proposals are the context's own continuations: on loopy output they are accepted.
    assert st.tau > 1.0


def test_buffered_commits_equal_eager_ones(target, eagle_draft):
    """The fallback sees the same state whether commits arrive one by one or buffered into one call."""
    torch.manual_seed(5)
    tok = torch.randint(512, (2, 7))
    aux = torch.randn(2, 7, 3 * 64)
    commits = [(slice(0, 4), torch.tensor([[0, 1, 2, 3], [0, 0, 0, 1]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])),
               (slice(4, 6), torch.tensor([[4, 5], [2, 3]]), torch.tensor([[1, 1], [1, 0]])),
               (slice(6, 7), torch.tensor([[6], [3]]), torch.tensor([[1], [1]]))]
    eager, lazy = Eagle3Drafter(eagle_draft), LookupDrafter(Eagle3Drafter(eagle_draft), min_ngram=3)
    eager.reset(2)
    lazy.reset(2)
    with torch.no_grad():
        for sl, pos, valid in commits:
            eager.commit(tok[:, sl], aux[:, sl], pos, valid.bool())
            lazy.commit(tok[:, sl], aux[:, sl], pos, valid.bool())
        assert lazy.pending and lazy.fallback.kv is None  # nothing sent yet
        ids_e, lp_e = eager.first(3)
        ids_l, lp_l = lazy.first(3)  # no row has a repeated 3-gram: the draft runs, after one commit
    assert not lazy.pending
    assert lazy.seqs == [tok[0].tolist(), tok[1, 2:5].tolist() + tok[1, 6:7].tolist()]
    torch.testing.assert_close(lazy.fallback.last_hidden, eager.last_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lazy.fallback.lengths, eager.lengths)
    assert torch.equal(ids_l, ids_e)
    torch.testing.assert_close(lp_l, lp_e.float())
