"""The speculative decoder: greedy equality with ``generate``, τ of oracle / wrong drafts, KV consistency,
and the sampled output distribution on a tiny random Llama target."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from specforge.errors import SpecforgeError
from specforge.inference.decoder import SpecConfig, SpeculativeDecoder
from specforge.inference.drafters import Eagle3Drafter, OracleDrafter, RandomDrafter
from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
from tests.conftest import tiny_llama_config

PROMPTS = [[5, 17, 33, 9, 100], [7, 8, 9], [300, 301, 302, 303, 304, 305, 306, 307]]
N = 24
CONFIGS = [(3, 1, 4), (5, 3, 6), (7, 4, 8)]


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="module")
def references(target):
    """Per prompt: target.generate greedy output (stops at EOS=2), and a long EOS-free continuation."""
    greedy, long = [], []
    for p in PROMPTS:
        x = torch.tensor([p])
        greedy.append(target.generate(x, max_new_tokens=N, do_sample=False)[0, len(p):].tolist())
        long.append(target.generate(x, max_new_tokens=N + 10, min_new_tokens=N + 10, do_sample=False,
                                    eos_token_id=None)[0].tolist())
    return greedy, long


@pytest.fixture(scope="module")
def eagle_draft(target):
    torch.manual_seed(1)
    draft = LlamaForCausalLMEagle3(tiny_llama_config(num_hidden_layers=1, draft_vocab_size=300)).eval()
    draft.load_embedding(target.model.embed_tokens.weight)
    return draft


def _strip_eos(seq, eos=2):
    return seq[: seq.index(eos) + 1] if eos in seq else seq


def _drafter(kind, long_refs, rows, eagle_draft):
    if kind == "oracle":
        return OracleDrafter([long_refs[r] for r in rows], 512)
    if kind == "random":
        return RandomDrafter(512, seed=3)
    return Eagle3Drafter(eagle_draft)


@pytest.mark.parametrize("conf", CONFIGS, ids=lambda c: "/".join(map(str, c)))
@pytest.mark.parametrize("kind", ["random", "oracle", "eagle3"])
@pytest.mark.parametrize("rows", [[0], [0, 1, 2]], ids=["b1", "b3"])
def test_greedy_equals_generate(target, references, eagle_draft, conf, kind, rows):
    greedy, long_refs = references
    cfg = SpecConfig(*conf, max_new_tokens=N, eos_token_ids=(2,))
    dec = SpeculativeDecoder(target, _drafter(kind, long_refs, rows, eagle_draft), cfg, aux_layer_ids=[1, 2, 3])
    outs, st = dec.generate([PROMPTS[r] for r in rows])
    for out, r in zip(outs, rows):
        assert out == _strip_eos(greedy[r])
    assert st.new_tokens == sum(len(o) for o in outs)
    assert st.verify_calls >= 1 and len(st.accept_lengths) >= st.verify_calls


@pytest.mark.parametrize("conf", CONFIGS + [(0, 1, 1)], ids=lambda c: "/".join(map(str, c)))
def test_oracle_accepts_everything_wrong_accepts_nothing(target, references, conf):
    _, long_refs = references
    rows = [0, 1, 2]
    prompts = [PROMPTS[r] for r in rows]
    n = 25  # 1 (prefill) + 24 new tokens: a multiple of every config's full step (4, 6, 8)
    cfg = SpecConfig(*conf, max_new_tokens=n)
    _, st = SpeculativeDecoder(target, OracleDrafter(long_refs, 512), cfg).generate(prompts)
    # The references run past n + steps tokens and n - 1 is a multiple of steps + 1: every step is full.
    assert st.accept_lengths and set(st.accept_lengths) == {conf[0] + 1}
    assert st.tau == conf[0] + 1
    assert st.acceptance_rates() == [1.0] * conf[0]
    if conf[0]:
        outs, st = SpeculativeDecoder(target, OracleDrafter(long_refs, 512, wrong=True), cfg).generate(prompts)
        assert set(st.accept_lengths) == {1} and st.tau == 1.0
        assert st.histogram()[0] == len(st.accept_lengths)
        assert [o for o in outs] == [r[len(p):len(p) + n] for r, p in zip(long_refs, prompts)]


def test_eagle3_drafter_cache_matches_full_recompute(target, eagle_draft):
    """Ragged incremental commits + a tree expansion equal one causal pass over each row's sequence."""
    torch.manual_seed(5)
    d = Eagle3Drafter(eagle_draft)
    aux_w = 3 * 64
    lens = [4, 2]
    tok = torch.randint(512, (2, 6))
    aux = torch.randn(2, 6, aux_w)
    d.reset(2)
    # Prefill: left-padded (row 1 has 2 pad slots); then a second commit of 2 valid slots for row 0 and 1 for row 1.
    valid1 = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    pos1 = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 1]])
    d.commit(tok[:, :4], aux[:, :4], pos1, valid1)
    valid2 = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    pos2 = torch.tensor([[4, 5], [2, 3]])
    d.commit(tok[:, 4:], aux[:, 4:], pos2, valid2)
    ids1, _ = d.first(2)
    child = torch.tensor([[7, 8], [9, 10]])
    d.expand(child, torch.zeros(2, 2, dtype=torch.long), child[:, :, None], 1, 2)
    with torch.no_grad():
        for b, (sl, n) in enumerate([(slice(0, 6), 6), (slice(2, 5), 3)]):
            t_b, a_b = tok[b:b + 1, sl], aux[b:b + 1, sl]
            if b == 1:  # row 1's valid slots: prefill slots 2..3 and the first slot of the second commit
                t_b = torch.cat([tok[1:2, 2:4], tok[1:2, 4:5]], 1)
                a_b = torch.cat([aux[1:2, 2:4], aux[1:2, 4:5]], 1)
            m = eagle_draft
            out, _ = m.decode_step(m.embed_input_ids(t_b), m.project_hidden_states(a_b),
                                   torch.arange(n)[None], None, None)
            torch.testing.assert_close(d.last_hidden[b, 0], out[0, -1], rtol=1e-4, atol=1e-5)
            # Depth-1 node j: context + itself, hidden = the last context output, position n.
            for j in range(2):
                t2 = torch.cat([t_b, child[b:b + 1, j:j + 1]], 1)
                h2 = torch.cat([m.project_hidden_states(a_b), out[:, -1:]], 1)
                out2, _ = m.decode_step(m.embed_input_ids(t2), h2, torch.arange(n + 1)[None], None, None)
                torch.testing.assert_close(d.prev_hidden[b, j], out2[0, -1], rtol=1e-4, atol=1e-5)
    assert ids1.shape == (2, 2)


def test_sampled_decoding_follows_target_distribution(target):
    """Temperature 1: the 2nd and 3rd tokens (drafted + verified) have the target's marginals."""
    torch.manual_seed(0)
    small = LlamaForCausalLM(tiny_llama_config(vocab_size=12, eos_token_id=None)).eval()
    with torch.no_grad():
        small.lm_head.weight.mul_(60)  # peaked, position-dependent distributions
    prompt = [3, 5, 7]
    n = 1500
    dec = SpeculativeDecoder(small, RandomDrafter(12, seed=4), SpecConfig(3, 2, 5, temperature=1.0,
                                                                          max_new_tokens=3, seed=7))
    outs, st = dec.generate([prompt] * n)
    assert all(len(o) == 3 for o in outs)
    assert sum(a > 1 for a in st.accept_lengths) > 50  # drafts do get accepted
    emp = torch.zeros(12, 12)
    for o in outs:
        emp[o[0], o[1]] += 1
    with torch.no_grad():
        p1 = torch.softmax(small(torch.tensor([prompt])).logits[0, -1], -1)
        seqs = torch.tensor([prompt + [x] for x in range(12)])
        p2 = torch.softmax(small(seqs).logits[:, -1], -1)  # [x1, x2]
    joint = p1[:, None] * p2
    tv = 0.5 * float((emp / n - joint).abs().sum())
    # With 1500 samples over 144 cells the sampling noise alone is ~0.1-0.15; a wrong rule is far off.
    assert tv < 0.2, tv
    tv_marg = 0.5 * float((emp.sum(0) / n - joint.sum(0)).abs().sum())
    assert tv_marg < 0.06, tv_marg


@pytest.mark.parametrize("conf", [(3, 1, 4), (5, 3, 6)], ids=lambda c: "/".join(map(str, c)))
def test_rows_stop_at_eos_independently(target, references, eagle_draft, conf):
    """EOS = a token row 0 emits early: row 0 stops there (and leaves the batch), the others go on."""
    greedy, _ = references
    eos = greedy[0][5]
    assert eos not in greedy[0][:5]
    refs = [target.generate(torch.tensor([p]), max_new_tokens=N, do_sample=False, eos_token_id=eos)[0, len(p):]
            .tolist() for p in PROMPTS]
    assert len(refs[0]) == 6 and max(len(r) for r in refs) > 6
    cfg = SpecConfig(*conf, max_new_tokens=N, eos_token_ids=(eos,))
    outs, _ = SpeculativeDecoder(target, Eagle3Drafter(eagle_draft), cfg, aux_layer_ids=[1, 2, 3]).generate(PROMPTS)
    assert outs == refs


@pytest.mark.parametrize("cut", ["max_new_tokens", "eos"])
def test_tau_counts_only_emitted_tokens(target, references, cut):
    """A 7/1/8 oracle cut by max new tokens or by an EOS inside its first verification: τ counts only the
    tokens that reach the output (the 1st new token comes from the prefill), not the 8 it accepted."""
    _, long_refs = references
    r = 2
    p, ref = PROMPTS[r], long_refs[r][len(PROMPTS[r]):]
    if cut == "eos":  # the first new token (index >= 1) not seen before acts as EOS
        j = next(j for j in range(1, 7) if ref[j] not in ref[:j])
        cfg = SpecConfig(7, 1, 8, max_new_tokens=N, eos_token_ids=(ref[j],))
    else:
        j = 4
        cfg = SpecConfig(7, 1, 8, max_new_tokens=5)
    outs, st = SpeculativeDecoder(target, OracleDrafter([long_refs[r]], 512), cfg).generate([p])
    assert outs[0] == ref[:j + 1]
    assert st.accept_lengths == [j] and st.tau == float(j)
    assert st.new_tokens == 1 + sum(st.accept_lengths)


@pytest.mark.parametrize("conf", [(3, 1, 4), (5, 3, 6)], ids=lambda c: "/".join(map(str, c)))
def test_bf16_greedy_equals_the_bf16_targets_own_generate(conf):
    """bf16 target and draft (what `bench --dtype auto` picks on CPUs with native bf16): the output equals
    the bf16 target's own greedy ``generate`` (its reference is the same-dtype target, not fp32)."""
    torch.manual_seed(0)
    target = LlamaForCausalLM(tiny_llama_config()).eval().to(torch.bfloat16)
    torch.manual_seed(1)
    draft = LlamaForCausalLMEagle3(tiny_llama_config(num_hidden_layers=1, draft_vocab_size=300)).eval()
    draft.load_embedding(target.model.embed_tokens.weight)
    draft.to(torch.bfloat16)
    refs = [_strip_eos(target.generate(torch.tensor([p]), max_new_tokens=N, do_sample=False)[0, len(p):].tolist())
            for p in PROMPTS]
    cfg = SpecConfig(*conf, max_new_tokens=N, eos_token_ids=(2,))
    outs, st = SpeculativeDecoder(target, Eagle3Drafter(draft), cfg, aux_layer_ids=[1, 2, 3]).generate(PROMPTS)
    assert outs == refs
    assert st.verify_calls > 0


@pytest.mark.parametrize("kind", ["eagle3", "random"])
def test_min_draft_prob_keeps_greedy_output_and_prunes_unlikely_nodes(target, references, eagle_draft, kind):
    """Dynamic depth: the output is still the target's greedy one, and nothing below the floor is verified."""
    greedy, long_refs = references
    rows = [0, 1, 2]
    prompts = [PROMPTS[r] for r in rows]
    full = SpecConfig(7, 1, 8, max_new_tokens=N, eos_token_ids=(2,))
    dyn = SpecConfig(7, 1, 8, max_new_tokens=N, eos_token_ids=(2,), min_draft_prob=0.3)
    sizes: list[int] = []
    dec = SpeculativeDecoder(target, _drafter(kind, long_refs, rows, eagle_draft), dyn, aux_layer_ids=[1, 2, 3])
    real_draft = dec._draft
    dec._draft = lambda root: (lambda t: (sizes.append(t.size), t)[1])(real_draft(root))
    outs, st = dec.generate(prompts)
    assert [o for o in outs] == [_strip_eos(greedy[r]) for r in rows]
    # RandomDrafter's sorted log-probs are in (-3, 0] per level: cumulative probabilities fall below 0.3 fast,
    # so trees stop early; an untrained tiny draft spreads its mass over 300 tokens (p << 0.3 per node).
    assert max(sizes) < 8 and min(sizes) >= 1
    _, st_full = SpeculativeDecoder(target, _drafter(kind, long_refs, rows, eagle_draft), full,
                                    aux_layer_ids=[1, 2, 3]).generate(prompts)
    assert st.draft_step_s < st_full.draft_step_s or kind == "random"  # fewer draft forwards


def test_min_draft_prob_keeps_confident_chains(target, references):
    """An oracle (log-prob 0 for the right token) keeps its full chain; a wrong one (log-prob -5) is pruned
    to the root: plain decoding steps that emit exactly one token each."""
    _, long_refs = references
    cfg = SpecConfig(3, 1, 4, max_new_tokens=25, min_draft_prob=0.5)
    _, st = SpeculativeDecoder(target, OracleDrafter(long_refs, 512), cfg).generate(PROMPTS)
    assert set(st.accept_lengths) == {4}
    outs, st = SpeculativeDecoder(target, OracleDrafter(long_refs, 512, wrong=True), cfg).generate(PROMPTS)
    assert set(st.accept_lengths) == {1}
    assert outs == [r[len(p):len(p) + 25] for r, p in zip(long_refs, PROMPTS)]
    with pytest.raises(SpecforgeError, match="min draft probability"):
        SpecConfig(3, 1, 4, min_draft_prob=1.0)
