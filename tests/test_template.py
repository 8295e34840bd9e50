"""Chat templates and loss masks against the real default model's tokenizer and its own Jinja template."""

from __future__ import annotations

import numpy as np
import pytest

import specforge.data.preprocess as preprocess
from specforge.data.preprocess import spans_to_token_mask, tokenize_conversation, tokenize_conversations
from specforge.data.template import TEMPLATE_REGISTRY, ChatTemplate, TemplateRegistry, get_renderer
from specforge.errors import SpecforgeError

U, A, S = "user", "assistant", "system"


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single_turn": [msg(U, "What is the capital of France?"), msg(A, "Paris.")],
    "multi_turn": [msg(U, "Hi"), msg(A, " Hello!\nHow can I help? "), msg(U, "Count to 3."), msg(A, "1, 2, 3")],
    "with_system": [msg(S, "Be terse."), msg(U, "2+2?"), msg(A, "4"), msg(U, "3+3?"), msg(A, "6")],
    "assistant_first": [msg(A, "Welcome! Ask me anything."), msg(U, "Why is the sky blue?"), msg(A, "Rayleigh scattering.")],
    "no_assistant": [msg(U, "Only a question.")],
    "unicode_code": [msg(U, "Code?"), msg(A, "```py\ndef f():\n    return '雨の音 😊'\n```"), msg(U, "ok")],
    "empty_answer": [msg(U, "Say nothing."), msg(A, "")],
}


def expected_loss_text(messages, end="<|im_end|>\n"):
    """Independent reference: the text that must be learned is each non-empty assistant content + end of turn
    (an empty reply teaches nothing, so not even its end of turn is learned)."""
    return [m["content"] + end for m in messages if m["role"] == A and m["content"].strip()]


def masked_runs_text(tokenizer, ids, mask):
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_registry_and_auto_match_the_tokenizers_own_template(smollm2_tokenizer, case):
    tok = smollm2_tokenizer
    messages = CONVERSATIONS[case]
    reg_ids, reg_mask = tokenize_conversation(messages, tok, get_renderer("smollm2"))
    auto_ids, auto_mask = tokenize_conversation(messages, tok, get_renderer("auto", tok))
    ref = tok.apply_chat_template(messages, tokenize=True)
    ref_ids = ref["input_ids"] if hasattr(ref, "keys") else ref
    assert reg_ids == list(ref_ids)
    assert auto_ids == reg_ids
    assert auto_mask == reg_mask
    # Mask 1 exactly on assistant content + its end-of-turn marker (system/user/headers are 0).
    got = masked_runs_text(tok, reg_ids, reg_mask)
    assert "".join(got) == "".join(expected_loss_text(messages))
    assert (sum(reg_mask) == 0) == (case in ("no_assistant", "empty_answer"))


def test_llama3_template_renders_expected_text_and_spans():
    tpl = TEMPLATE_REGISTRY.get("llama3")
    text, spans = tpl.render([msg(U, "hi"), msg(A, "yo")])
    want = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nyo<|eot_id|>")
    assert text == want
    assert [text[a:b] for a, b in spans] == ["yo<|eot_id|>"]


def test_seed_style_registration_and_lookup_errors():
    reg = TemplateRegistry()
    reg.register(name="mine", template=ChatTemplate(
        assistant_header="<A>", user_header="<user>", system_prompt="sys", end_of_turn_token="</s>"))
    tpl = reg.get("mine")
    text, spans = tpl.render([msg(U, "q"), msg(A, "a")])
    assert text == "<system>sys</s><user>q</s><A>a</s>"  # system header derived from the user header
    assert [text[a:b] for a, b in spans] == ["a</s>"]
    with pytest.raises(SpecforgeError, match="already registered"):
        reg.register(name="mine", template=tpl)
    with pytest.raises(SpecforgeError, match="known: auto, mine"):
        reg.get("nope")
    with pytest.raises(SpecforgeError, match="unknown chat template 'nope'.*llama3.*smollm2"):
        get_renderer("nope")
    for name in ("llama3", "qwen", "chatml", "smollm2"):
        assert name in TEMPLATE_REGISTRY


def test_auto_needs_a_chat_template(smollm2_tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(SpecforgeError, match="has none"):
        get_renderer("auto", NoTemplate())


def test_spans_to_token_mask_matches_bruteforce():
    rng = np.random.default_rng(0)
    for _ in range(50):
        cuts = np.sort(rng.choice(np.arange(1, 200), size=40, replace=False))
        starts = np.concatenate([[0], cuts[:-1]])
        offsets = np.stack([starts, cuts], 1)
        b = np.sort(rng.choice(np.arange(0, 200), size=6, replace=False)).reshape(-1, 2)
        spans = [tuple(x) for x in b]
        ref = [int(any(a <= s < e for a, e in spans)) for s, _ in offsets]
        assert spans_to_token_mask(offsets, spans).tolist() == ref
    assert spans_to_token_mask(np.zeros((0, 2), dtype=np.int64), [(0, 3)]).tolist() == []


def test_truncation_keeps_the_prefix(smollm2_tokenizer):
    tok = smollm2_tokenizer
    messages = CONVERSATIONS["multi_turn"]
    full_ids, full_mask = tokenize_conversation(messages, tok, get_renderer("smollm2"))
    for n in (1, 7, len(full_ids) - 1, len(full_ids), len(full_ids) + 5):
        ids, mask = tokenize_conversation(messages, tok, get_renderer("smollm2"), max_length=n)
        assert ids == full_ids[:n] and mask == full_mask[:n]
    out = tokenize_conversations([messages], tok, get_renderer("smollm2"), max_length=5)
    assert out["truncated"] == [True] and out["num_spans"] == [2]


def test_long_text_cut_gives_the_same_ids_as_full_tokenisation(smollm2_tokenizer, monkeypatch):
    """The fast path tokenises only a whitespace-cut prefix of long texts; it must equal the full encoding."""
    tok = smollm2_tokenizer
    pieces = ["word " * 7, "\n\n\n", "    indented = code(x)\n", "雨の音がしずかに響く夜" * 3, "!!!!!!!!!", "\t\t",
              "https://example.com/a_very_long_path_without_spaces_", "  \n  "]
    rng = np.random.default_rng(1)
    convs = []
    for k in range(12):
        body = "".join(pieces[i] for i in rng.integers(0, len(pieces), size=60))
        convs.append([msg(U, body[: 40 + 11 * k]), msg(A, body), msg(U, body[::-1]), msg(A, body[k:])])
    renderer = get_renderer("smollm2")
    monkeypatch.setattr(preprocess, "CUT_CHARS_PER_TOKEN", 2)  # force cuts on every row
    for max_length in (17, 64, 200):
        out = tokenize_conversations(convs, tok, renderer, max_length)
        for conv, ids, mask in zip(convs, out["input_ids"], out["loss_mask"]):
            text, spans = renderer.render(conv)
            ref = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ref_mask = spans_to_token_mask(np.asarray(ref["offset_mapping"]), spans)
            assert ids == ref["input_ids"][:max_length]
            assert mask == ref_mask[:max_length].tolist()
