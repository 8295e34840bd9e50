"""`specforge bench --engine llamacpp`: records in the built-in decoder's format; bad input in one line."""

from __future__ import annotations

import json
import sys

import pytest
import torch

BENCH = ["bench", "--engine", "llamacpp", "--model-path", "smollm2-135m", "--benchmark-list", "mtbench:1",
         "--max-new-tokens", "6", "--no-plots"]


@pytest.mark.parametrize("extra, needle", [
    (["--config-list", "1,3,2,8"], "topk 1"),
    (["--config-list", "2,3,1,4"], "batch_size 1"),
    (["--config-list", "1,3,1,4"], "need --speculative-draft-model-path"),
    (["--speculative-draft-model-path", "oracle"], "built-in-decoder only"),
    (["--assistant-model", "smollm2-135m"], "--assistant-model"),
    (["--config-list", "1,0,1,1", "--baselines", "assisted"], "not available with --engine llamacpp"),
])
def test_bad_llamacpp_bench_input_is_one_line(tmp_path, capsys, extra, needle):
    from specforge.cli import main

    out = tmp_path / "o.jsonl"
    assert main(BENCH + ["--output", str(out), *extra]) == 2
    err = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error:")]
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_missing_engine_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from specforge.cli import main

    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # import fails as if not installed
    assert main(BENCH + ["--output", str(tmp_path / "o.jsonl"), "--config-list", "1,0,1,1"]) == 2
    assert "pip install 'specforge[llamacpp]'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_llamacpp_bench_records(tmp_path):
    """Vanilla and EAGLE-3 (a random draft exported on the fly) on one MT-bench question (2 turns)."""
    pytest.importorskip("xllamacpp", reason="llama.cpp engine not installed (pip install 'specforge[llamacpp]')")
    from test_llamacpp import make_draft, save

    from specforge.cli import main

    ckpt = save(make_draft(torch.arange(512) * 11), tmp_path / "draft")
    out = tmp_path / "o.jsonl"
    assert main(BENCH + ["--output", str(out), "--speculative-draft-model-path", str(ckpt),
                         "--config-list", "1,0,1,1", "1,2,1,3", "--baselines"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["config_str"]) for r in recs] == [("vanilla", "1,0,0,0"), ("eagle3", "1,2,1,3")]
    for r in recs:
        assert r["engine"] == "llamacpp" and r["threads"] == 1 and r["num_turns"] == 2
        assert r["new_tokens"] == recs[0]["new_tokens"]  # greedy: every method emits the same tokens
        assert r["tokens_per_s"] > 0
    eagle = recs[1]
    assert eagle["drafted_tokens"] > 0 and eagle["accept_length"] >= 1.0 and eagle["speedup"] > 0
    assert recs[0]["accept_length"] is None and recs[0]["speedup"] is None


def test_llamacpp_methods_in_run_order():
    from specforge.bench.llamacpp import EngineSpec, _methods
    from specforge.bench.runner import BenchOptions

    opts = BenchOptions("m", "d.gguf", [(1, 0, 1, 1), (1, 3, 1, 4), (1, 5, 1, 6)], ["mtbench:1"], "o.jsonl",
                        baselines=["prompt_lookup"], prompt_lookup_num_tokens=8)
    got = [(n, e) for n, _, e in _methods(opts, "d.gguf")]
    assert got == [("vanilla", EngineSpec()), ("eagle3", EngineSpec("eagle3", 3, "d.gguf")),
                   ("eagle3", EngineSpec("eagle3", 5, "d.gguf")), ("ngram", EngineSpec("ngram", 8))]
