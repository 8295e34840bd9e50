"""regenerate: the batched engine against HF generate, the turn-by-turn driver, shards, errors and resume."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama_config

from specforge.cli import main
from specforge.regen.embedded import Completion, GenerationError
from specforge.regen.engine import BatchEngine, GenRequest, top_p_filter
from specforge.regen.run import RegenOptions, regenerate


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def all_rows(out_dir):
    rows = []
    for p in sorted(Path(out_dir).glob("shard_*.jsonl")):
        rows += read_jsonl(p)
    return rows


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


def hf_greedy(model, prompt, max_new, eos):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_engine_greedy_equals_hf_generate_per_row(tiny_model):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (int(n),), generator=g).tolist() for n in torch.randint(1, 40, (12,), generator=g)]
    max_new = [int(x) for x in torch.randint(1, 25, (12,), generator=g)]
    # An EOS the model actually emits, so rows finish early and their slots are refilled mid-batch.
    probe = BatchEngine(tiny_model, [], max_batch=4).run([GenRequest(p, 20) for p in prompts[:4]])
    eos = max({t for r in probe for t in r.output}, key=lambda t: sum(r.output.count(t) for r in probe))
    eng = BatchEngine(tiny_model, [eos], max_batch=3, prefill_chunk=7)  # chunked prefill too
    reqs = eng.run([GenRequest(p, n) for p, n in zip(prompts, max_new)])
    assert any(r.finish_reason == "stop" for r in reqs) and any(r.finish_reason == "length" for r in reqs)
    for r in reqs:
        assert r.output == hf_greedy(tiny_model, r.prompt, r.max_new_tokens, eos)


def test_engine_sampling_is_reproducible_whatever_the_batch(tiny_model):
    prompts = [[5, 6, 7], [9] * 12, [100, 200], [300, 301, 302, 303]]
    runs = []
    for batch in (1, 3):
        eng = BatchEngine(tiny_model, [], max_batch=batch)
        runs.append([r.output for r in eng.run([GenRequest(p, 10, temperature=1.0, top_p=0.9, seed=i)
                                                 for i, p in enumerate(prompts)])])
    assert runs[0] == runs[1]
    assert len(set(map(tuple, runs[0]))) > 1


def test_top_p_filter_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15]))
    kept = torch.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [False, True, True, False]
    assert torch.isfinite(top_p_filter(logits, 0.85)).tolist() == [False, True, True, True]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_engine_rejects_a_prompt_longer_than_the_context(tiny_model):
    eng = BatchEngine(tiny_model, [], max_batch=2, max_length=16)
    long, short = GenRequest(list(range(3, 30)), 4), GenRequest([3, 4], 100)
    eng.run([long, short])
    assert long.finish_reason == "error" and "exceeds the model's context" in long.error
    assert short.finish_reason == "length" and len(short.prompt) + len(short.output) == 16


# ---- the driver with a fake backend (fast) ----------------------------------------------------------


class FakeBackend:
    """Answers with a function of the whole history; fails rows whose text asks for it."""

    def __init__(self, fail_on=(), crash_after=None):
        self.calls = []
        self.fail_on = set(fail_on)
        self.crash_after = crash_after

    async def chat(self, messages, max_tokens, temperature, top_p, seed):
        await asyncio.sleep(0)
        self.calls.append(messages)
        if self.crash_after is not None and len(self.calls) > self.crash_after:
            raise KeyboardInterrupt
        last = messages[-1]["content"]
        if last in self.fail_on:
            raise GenerationError("request timeout")
        n_prev = sum(1 for m in messages if m["role"] == "assistant")
        text = f"answer to {last!r} after {n_prev}"
        return Completion(text, len(text.split()), "length" if "long" in last else "stop")

    def close(self):
        pass


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def conv_rows(n, turns=2):
    rows = []
    for i in range(n):
        conv = [{"role": "system", "content": "be brief"}] if i % 3 == 0 else []
        for t in range(turns if i % 2 else 1):
            conv += [{"role": "user", "content": f"q{i}.{t}" + (" long" if i == 4 else "")},
                     {"role": "assistant", "content": "ORIGINAL"}]
        rows.append({"id": f"r{i}", "conversations": conv})
    return rows


def opts(tmp_path, src, out="out", **kw):
    return RegenOptions(model_name="fake", raw_data_file=src, output_dir=str(tmp_path / out), num_per_shard=3,
                        progress=False, **kw)


def test_turns_are_answered_in_order_with_the_regenerated_history(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(7))
    be = FakeBackend()
    stats = regenerate(opts(tmp_path, src), backend=be)
    rows = {r["id"]: r for r in all_rows(tmp_path / "out")}
    assert stats.ok == 7 and set(rows) == {f"r{i}" for i in range(7)}
    assert [len(read_jsonl(p)) for p in sorted((tmp_path / "out").glob("shard_*.jsonl"))] == [3, 3, 1]
    r1 = rows["r1"]["conversations"]
    assert [m["role"] for m in r1] == ["user", "assistant", "user", "assistant"]
    assert r1[3]["content"] == "answer to 'q1.1' after 1" and "ORIGINAL" not in json.dumps(rows)
    # Turn 2's request carried turn 1's *regenerated* answer.
    second = next(c for c in be.calls if c[-1]["content"] == "q1.1")
    assert second[1] == {"role": "assistant", "content": "answer to 'q1.0' after 0"}
    assert rows["r0"]["conversations"][0] == {"role": "system", "content": "be brief"}
    assert rows["r4"]["conversations"][1]["truncated"] is True and stats.truncated_turns == 1
    assert not (tmp_path / "out" / "error.jsonl").exists()
    assert not list((tmp_path / "out").glob("*.partial"))


def test_system_prompt_flag_replaces_the_rows_system_turns(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(3))
    be = FakeBackend()
    regenerate(opts(tmp_path, src, system_prompt="You are terse."), backend=be)
    assert all(c[0] == {"role": "system", "content": "You are terse."} for c in be.calls)
    assert all(sum(m["role"] == "system" for m in c) == 1 for c in be.calls)


def test_failed_rows_go_to_error_jsonl_and_resume_retries_them(tmp_path, capsys):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(6))
    stats = regenerate(opts(tmp_path, src), backend=FakeBackend(fail_on={"q3.1", "q2.0"}))
    assert (stats.ok, stats.error) == (4, 2)
    errors = read_jsonl(tmp_path / "out" / "error.jsonl")
    assert sorted(e["id"] for e in errors) == ["r2", "r3"] and errors[0]["error"] == "request timeout"
    assert {e["line"] for e in errors} == {3, 4}
    assert sorted(r["id"] for r in all_rows(tmp_path / "out")) == ["r0", "r1", "r4", "r5"]
    # without --resume the dir is refused, with one line saying why
    rc = main(["regenerate", "--raw-data-file", src, "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2 and "already holds another run's output" in capsys.readouterr().err
    stats = regenerate(opts(tmp_path, src, resume=True), backend=FakeBackend())
    assert (stats.ok, stats.error, stats.skipped_done) == (2, 0, 4)
    ids = [r["id"] for r in all_rows(tmp_path / "out")]
    assert sorted(ids) == [f"r{i}" for i in range(6)]
    assert not (tmp_path / "out" / "error.jsonl").exists()


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(11))
    regenerate(opts(tmp_path, src, out="ref"), backend=FakeBackend())
    with pytest.raises(KeyboardInterrupt):
        regenerate(opts(tmp_path, src, max_concurrency=2), backend=FakeBackend(crash_after=8))
    out = tmp_path / "out"
    partial = list(out.glob("*.partial"))
    assert partial, "an interrupted run keeps its partial shard for --resume"
    with open(partial[0], "a", encoding="utf-8") as f:  # a kill in the middle of a write
        f.write('{"id": "r10", "conversa')
    stats = regenerate(opts(tmp_path, src, resume=True), backend=FakeBackend())
    assert stats.skipped_done + stats.ok == 11
    rows = all_rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(r["id"] for r in all_rows(tmp_path / "ref"))
    assert sorted(rows, key=lambda r: r["id"]) == sorted(all_rows(tmp_path / "ref"), key=lambda r: r["id"])
    assert not list(out.glob("*.partial"))


def test_resume_with_other_settings_is_refused(tmp_path):
    from specforge.errors import SpecforgeError

    src = write_rows(tmp_path / "in.jsonl", conv_rows(2))
    regenerate(opts(tmp_path, src), backend=FakeBackend())
    with pytest.raises(SpecforgeError, match="max_tokens=512.*max_tokens=64"):
        regenerate(opts(tmp_path, src, resume=True, max_tokens=64), backend=FakeBackend())


def test_malformed_rows_are_reported_with_line_numbers_and_nothing_is_written(tmp_path, capsys):
    good = json.dumps(conv_rows(1)[0])
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join([good, "{broken", json.dumps({"id": 1, "conversations": "x"}),
                              json.dumps({"id": "r0", "conversations": []}),
                              json.dumps({"id": 2, "conversations": [{"role": "bot", "content": "x"}]})]) + "\n")
    rc = main(["regenerate", "--raw-data-file", str(src), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    for piece in ("4 bad row(s)", "line 2: malformed JSON", "line 3: no 'conversations' list",
                  "line 4: duplicate id 'r0' (first on line 1)", "line 5: turn 0 needs a role"):
        assert piece in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--num-per-shard", "0"], "--num-per-shard must be >= 1"),
])
def test_bad_flags_are_one_line_errors(tmp_path, argv, message, capsys):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(1))
    rc = main(["regenerate", "--raw-data-file", src, "--output-dir", str(tmp_path / "out"), *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_num_samples_writes_one_row_per_sample(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(2))
    stats = regenerate(opts(tmp_path, src, num_samples=3, temperature=0.7), backend=FakeBackend())
    rows = all_rows(tmp_path / "out")
    assert stats.ok == 6 and sorted((r["id"], r["sample"]) for r in rows) == [
        (f"r{i}", s) for i in range(2) for s in range(3)]


# ---- end to end on a tiny random target with the real chat template --------------------------------


def test_cli_embedded_output_equals_hf_generate_turn_by_turn(tmp_path, tiny_target_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"id": "a", "conversations": [{"role": "user", "content": "Hi there"},
                                          {"role": "assistant", "content": "old"},
                                          {"role": "user", "content": "And then?"}]},
            {"id": "b", "conversations": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Name a colour."}]},
            {"id": "c", "conversations": [{"role": "assistant", "content": "no user turn"}]}]
    src = write_rows(tmp_path / "in.jsonl", rows)
    rc = main(["regenerate", "--model-name", tiny_target_dir,
               "--raw-data-file", src, "--output-dir", str(tmp_path / "out"), "--max-tokens", "6",
               "--dtype", "float32", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "2 ok, 0 error, 1 skipped (0 already done, 1 without a user turn)" in summary
    got = {r["id"]: r["conversations"] for r in all_rows(tmp_path / "out")}
    tok = AutoTokenizer.from_pretrained(tiny_target_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_target_dir, dtype=torch.float32).eval()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for rid, row in zip("ab", rows):
        msgs = []
        for t in row["conversations"]:
            if t["role"] == "assistant":
                continue
            msgs.append(t)
            if t["role"] != "user":
                continue
            ids = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)["input_ids"]
            new = hf_greedy(model, ids, 6, [eos, tok.eos_token_id])
            text = tok.decode([x for x in new if x not in (eos, tok.eos_token_id)], skip_special_tokens=True)
            msgs = msgs + [{"role": "assistant", "content": text}]
        assert [{"role": m["role"], "content": m["content"]} for m in got[rid]] == msgs
