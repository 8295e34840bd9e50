"""build-cache: tokenised rows, draft vocab, cache hit/miss, --view-train-data and bad input via the CLI."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from specforge.cli import main
from specforge.data.cache import build_eagle3_dataset_cache, resolve_draft_vocab_size
from specforge.data.collate import pad_batch
from specforge.data.preprocess import NO_SPAN_WARNING, load_conversations, tokenize_conversation
from specforge.data.template import TEMPLATE_REGISTRY, ChatTemplate, get_renderer
from specforge.data.view import render_sample
from specforge.data.vocab import build_vocab_mapping, draft_to_target_ids
from specforge.errors import SpecforgeError

CONV = Path(__file__).parent / "fixtures" / "conversations.jsonl"


@pytest.fixture
def conv_file(tmp_path):
    dst = tmp_path / "train.jsonl"
    shutil.copy(CONV, dst)
    return dst


def build(tiny_target_dir, train, cache_dir, tokenizer, **kw):
    kw.setdefault("chat_template", "smollm2")
    kw.setdefault("max_length", 256)
    return build_eagle3_dataset_cache(tiny_target_dir, train, cache_dir=cache_dir, tokenizer=tokenizer, **kw)


def test_rows_masks_and_vocab_match_independent_references(tiny_target_dir, smollm2_tokenizer, conv_file, tmp_path, caplog):
    tok = smollm2_tokenizer
    with caplog.at_level(logging.WARNING):
        res = build(tiny_target_dir, conv_file, tmp_path / "c", tok, eval_data_path=conv_file, draft_vocab_size=40)
    convs = load_conversations(CONV)
    renderer = get_renderer("smollm2")
    assert res.train.column_names == ["input_ids", "loss_mask"] and len(res.eval) == len(convs)
    counts = Counter()
    for row, conv in zip(res.train, convs):
        ids, mask = tokenize_conversation(conv, tok, renderer, max_length=256)
        assert row["input_ids"] == ids and row["loss_mask"] == mask
        counts.update(i for i, m in zip(ids, mask) if m)
    # Two fixture rows have no assistant turn: one warning line with the count, not one per row.
    warnings = [r.getMessage() for r in caplog.records if NO_SPAN_WARNING in r.getMessage()]
    assert len(warnings) == 2 and all("2 of 6" in w for w in warnings)  # train + eval
    # Draft vocab: 40 ids, ordered by target id, every chosen count >= every unchosen count.
    d2t, t2d = res.d2t, res.t2d
    assert d2t.dtype == torch.int64 and d2t.shape == (40,) and t2d.dtype == torch.bool and t2d.shape == (len(tok),)
    targets = draft_to_target_ids(d2t)
    assert torch.all(targets[1:] > targets[:-1]) and int(t2d.sum()) == 40
    assert torch.equal(torch.nonzero(t2d).flatten(), targets)
    chosen = set(targets.tolist())
    assert min(counts[i] for i in chosen) >= max((c for i, c in counts.items() if i not in chosen), default=0)


def test_vocab_padding_when_fewer_distinct_tokens(tiny_target_dir, smollm2_tokenizer, conv_file, tmp_path):
    res = build(tiny_target_dir, conv_file, tmp_path / "c", smollm2_tokenizer, draft_vocab_size=5000)
    seen = {i for row in res.train for i, m in zip(row["input_ids"], row["loss_mask"]) if m}
    targets = set(draft_to_target_ids(res.d2t).tolist())
    assert len(seen) < 5000 and seen <= targets and len(targets) == 5000
    # Padding ids are the lowest unseen target ids (deterministic tie-break).
    assert sorted(targets - seen) == sorted(i for i in range(len(smollm2_tokenizer)) if i not in seen)[: 5000 - len(seen)]


def test_build_vocab_mapping_small_example():
    d2t, t2d = build_vocab_mapping(torch.tensor([0, 5, 3, 5, 0, 1]), 3)
    assert d2t.tolist() == [1, 1, 1]  # draft ids 0,1,2 -> target 1,2,3
    assert t2d.tolist() == [False, True, True, True, False, False]
    d2t, t2d = build_vocab_mapping(torch.tensor([0, 0, 0, 9]), 3)  # one seen token, padded with ids 0, 1
    assert draft_to_target_ids(d2t).tolist() == [0, 1, 3]
    with pytest.raises(SpecforgeError):
        build_vocab_mapping(torch.tensor([1, 2]), 3)


def test_cache_hit_and_miss(tiny_target_dir, smollm2_tokenizer, conv_file, tmp_path, caplog):
    tok, cache = smollm2_tokenizer, tmp_path / "c"
    first = build(tiny_target_dir, conv_file, cache, tok)
    assert not first.hit
    with caplog.at_level(logging.INFO):
        again = build(tiny_target_dir, conv_file, cache, tok)
    assert again.hit and again.path == first.path and any("cache hit" in r.getMessage() for r in caplog.records)
    assert again.train["input_ids"] == first.train["input_ids"] and torch.equal(again.d2t, first.d2t)
    paths = {first.path}
    short = {"max_length": 8, "allow_no_supervised_tokens": True}  # cuts every assistant turn away
    for kw in (short, {"chat_template": "auto"}, {"draft_vocab_size": 100}):
        r = build(tiny_target_dir, conv_file, cache, tok, **kw)
        assert not r.hit and r.path not in paths
        paths.add(r.path)
    assert all(max(len(x) for x in r.train["input_ids"]) <= 8 for r in [build(tiny_target_dir, conv_file, cache, tok, **short)])
    # The same rows rewritten (new mtime, e.g. prepare-data run again) stay a hit.
    content = open(conv_file, encoding="utf-8").read()
    os.utime(conv_file, ns=(1, 1))
    with open(conv_file, "w", encoding="utf-8") as f:
        f.write(content)
    assert build(tiny_target_dir, conv_file, cache, tok).path == first.path
    # A changed data file is a miss even at the same path.
    with open(conv_file, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "new", "conversations": [{"role": "user", "content": "x"},
                                                           {"role": "assistant", "content": "y"}]}) + "\n")
    changed = build(tiny_target_dir, conv_file, cache, tok)
    assert not changed.hit and changed.path != first.path and len(changed.train) == len(first.train) + 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_registered_template_is_usable_by_name(tiny_target_dir, smollm2_tokenizer, conv_file, tmp_path):
    TEMPLATE_REGISTRY.register(name="test-plain", override=True, template=ChatTemplate(
        assistant_header="A: ", user_header="user: ", system_prompt=None, end_of_turn_token="\n"))
    res = build(tiny_target_dir, conv_file, tmp_path / "c", smollm2_tokenizer, chat_template="test-plain")
    row = res.train[0]
    assert smollm2_tokenizer.decode(row["input_ids"]) == "user: What is 2 + 2?\nA: 2 + 2 = 4.\n"
    assert smollm2_tokenizer.decode([i for i, m in zip(row["input_ids"], row["loss_mask"]) if m]) == "2 + 2 = 4.\n"


def test_num_proc_2_gives_the_same_rows(tiny_target_dir, smollm2_tokenizer, conv_file, tmp_path):
    one = build(tiny_target_dir, conv_file, tmp_path / "a", smollm2_tokenizer)
    two = build(tiny_target_dir, conv_file, tmp_path / "b", smollm2_tokenizer, num_proc=2)
    assert one.train["input_ids"] == two.train["input_ids"] and one.train["loss_mask"] == two.train["loss_mask"]


def test_draft_vocab_size_resolution(tmp_path):
    cfg = tmp_path / "draft.json"
    assert resolve_draft_vocab_size(49152) == 32000 and resolve_draft_vocab_size(1000) == 1000
    cfg.write_text(json.dumps({"vocab_size": 49152, "draft_vocab_size": 16384}))
    assert resolve_draft_vocab_size(49152, cfg) == 16384
    assert resolve_draft_vocab_size(49152, cfg, override=100) == 100


def test_pad_batch_right_pads():
    rows = [{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}, {"input_ids": [8], "loss_mask": [1]}]
    out = pad_batch(rows, pad_token_id=2)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long for t in out.values())
    assert pad_batch(rows, 0, pad_to_multiple_of=4)["input_ids"].shape == (2, 4)


def test_view_colours_follow_the_mask(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids, mask = tokenize_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                      tok, get_renderer("smollm2"))
    text = render_sample(ids, mask, tok)
    green = "".join(text.plain[s.start:s.end] for s in text.spans if s.style == "green")
    red = "".join(text.plain[s.start:s.end] for s in text.spans if s.style == "red")
    assert green == "hello<|im_end|>\n" and red.endswith("<|im_start|>assistant\n") and "hi" in red


def test_cli_real_default_model_with_view(tmp_path, capsys):
    """End to end on the real default model: auto and smollm2 templates give the same cache content."""
    train = tmp_path / "train.jsonl"
    shutil.copy(CONV, train)
    base = ["build-cache", "--target-model-path", "smollm2-135m", "--train-data-path", str(train),
            "--cache-dir", str(tmp_path / "c"), "--max-length", "64", "--draft-vocab-size", "64"]
    assert main(base + ["--chat-template", "smollm2", "--view-train-data", "1", "3"]) == 0
    out = capsys.readouterr().out
    assert "train sample 1" in out and "train sample 3" in out and "Name three primes." in out
    assert main(base + ["--chat-template", "auto"]) == 0
    dirs = sorted(p for p in (tmp_path / "c").iterdir())
    assert len(dirs) == 2
    from specforge.data.cache import load_cache

    a, b = (load_cache(d) for d in dirs)
    assert a.train["input_ids"] == b.train["input_ids"] and a.train["loss_mask"] == b.train["loss_mask"]
    assert torch.equal(a.d2t, b.d2t)


BAD_ROWS = {
    "malformed-line": ('{"conversations": [{"role": "user", "content": "x"}]}\n{"conversations": [\n',
                       r"train\.jsonl:2: malformed JSON"),
    "missing-conversations": ('{"id": 1, "messages": []}\n', r"train\.jsonl:1: row has no 'conversations'"),
    "unknown-role": ('{"conversations": [{"role": "gpt", "content": "x"}]}\n', r"train\.jsonl:1: turn 0 has unknown role 'gpt'"),
    "empty-file": ("\n", r"train\.jsonl: no conversations"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_train_file_exits_2_and_leaves_no_cache(tiny_target_dir, tmp_path, capsys, case):
    content, match = BAD_ROWS[case]
    train = tmp_path / "train.jsonl"
    train.write_text(content, encoding="utf-8")
    cache = tmp_path / "c"
    rc = main(["build-cache", "--target-model-path", tiny_target_dir, "--train-data-path", str(train),
               "--cache-dir", str(cache), "--chat-template", "smollm2"])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--chat-template", "nope"], r"unknown chat template 'nope'; known: auto, chatml"),
        (["--draft-model-config", "{cfg_vocab}"], r"vocab_size 32000 but the target model's vocab is 49152"),
        (["--draft-model-config", "{cfg_big}"], r"draft vocab of 60000 tokens but the target vocab has only 49152"),
        (["--draft-vocab-size", "50000"], r"--draft-vocab-size asks for a draft vocab of 50000"),
        (["--view-train-data", "99"], r"--view-train-data index 99 is out of range"),
    ],
    ids=["unknown-template", "draft-vocab-mismatch", "draft-vocab-too-big", "override-too-big", "view-out-of-range"],
)
def test_bad_options_exit_2(tiny_target_dir, conv_file, tmp_path, capsys, extra, match):
    cfg_vocab, cfg_big = tmp_path / "v.json", tmp_path / "b.json"
    cfg_vocab.write_text(json.dumps({"vocab_size": 32000, "draft_vocab_size": 1000}))
    cfg_big.write_text(json.dumps({"vocab_size": 49152, "draft_vocab_size": 60000}))
    extra = [e.format(cfg_vocab=cfg_vocab, cfg_big=cfg_big) for e in extra]
    cache = tmp_path / "c"
    rc = main(["build-cache", "--target-model-path", tiny_target_dir, "--train-data-path", str(conv_file),
               "--cache-dir", str(cache), "--chat-template", "smollm2", *extra])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and re.search(match, err[0]), err
    if "--view-train-data" not in extra:
        assert not cache.exists() or not any(cache.iterdir())


def test_cache_dir_is_readable_by_others(tiny_target_dir, smollm2_tokenizer, conv_file, tmp_path):
    res = build(tiny_target_dir, conv_file, tmp_path / "c", smollm2_tokenizer)
    assert os.stat(res.path).st_mode & 0o055 == 0o055
