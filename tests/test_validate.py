"""`specforge validate`: every known silent failure is caught with its own one-line message.

Each test starts from a clean export (which must pass) and breaks exactly one thing the way it happens
in practice; the τ check decodes with the built-in decoder against constructed targets whose greedy
output is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_export import (  # noqa: F401  (target_dir is a shared fixture)
    H, TARGET_LAYERS, V, VD, draft_config, draft_tensors, export, target_dir, tiny_target, write_ckpt,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread avoids OpenMP spin-waits when the 2 cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _export(tmp_path, to="sglang", eagle_ids=None, ht=None, **kw):
    ht = ht or H
    ckpt = write_ckpt(tmp_path / "epoch_0", cfg=draft_config(eagle_ids=eagle_ids, ht=ht), ht=ht)
    out = tmp_path / to
    export(ckpt, out, to, **kw)
    return out


def _edit_tensors(d: Path, fn):
    f = d / "model.safetensors"
    t = load_file(str(f))
    fn(t)
    save_file(t, str(f))


def _edit_config(d: Path, fn):
    f = d / "config.json"
    cfg = json.loads(f.read_text())
    fn(cfg)
    f.write_text(json.dumps(cfg))


def _validate(d, target=None, decode=False):
    from specforge.export import validate_directory

    return validate_directory(d, target, decode=decode, decode_options={"max_new_tokens": 16, "num_prompts": 1})


def _failed(report):
    bad = report.failures()
    for c in bad:  # each failure is one line with a reason and a fix
        assert "\n" not in c.detail and c.fix, c
    return {c.name: c.detail for c in bad}


@pytest.mark.parametrize("to", ["sglang", "vllm-eagle3", "vllm-speculators", "hf"])
def test_clean_exports_pass(tmp_path, to):
    report = _validate(_export(tmp_path, to, eagle_ids=[0, 2, 3], verifier="x/y"))
    assert report.ok, report.failures()
    assert report.get("loads in specforge").status == "pass"
    assert report.get("aux layer ids").status == "pass"


# ------------------------------------------------------------------------------------ the known failures

def test_missing_lm_head(tmp_path):
    d = _export(tmp_path)
    _edit_tensors(d, lambda t: t.pop("lm_head.weight"))
    bad = _failed(_validate(d))
    assert "lm_head" in bad and "random head" in bad["lm_head"] and "τ = 1.0" in bad["lm_head"]
    assert "required tensors" not in bad  # one failure, one message


def test_random_embed_tokens(tmp_path, target_dir):
    d = _export(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("embed_tokens.weight", torch.randn(V, H)))
    bad = _failed(_validate(d))
    assert "no target to compare" in bad["embedding"]
    bad = _failed(_validate(d, target_dir))
    assert "differs from the target's embedding" in bad["embedding"]
    # the target's own embedding is tolerated (vLLM would use an identical copy)
    from transformers import AutoModelForCausalLM

    emb = AutoModelForCausalLM.from_pretrained(target_dir).get_input_embeddings().weight.detach().clone()
    _edit_tensors(d, lambda t: t.__setitem__("embed_tokens.weight", emb))
    report = _validate(d, target_dir)
    assert report.ok and report.get("embedding").detail.endswith("equals the target's")


def test_missing_norm_before_residual(tmp_path):
    d = _export(tmp_path, "vllm-speculators", verifier="x/y")
    _edit_config(d, lambda c: c.pop("norm_before_residual"))
    bad = _failed(_validate(d))
    assert "assumes true" in bad["norm_before_residual"]
    _edit_config(d, lambda c: c.__setitem__("norm_before_residual", True))
    assert "norm after the residual" in _failed(_validate(d))["norm_before_residual"]


def test_shifted_layer_ids_speculators(tmp_path):
    """The SGLang value copied into vLLM's field (the classic off-by-one)."""
    d = _export(tmp_path, "vllm-speculators", eagle_ids=[0, 2, 3], verifier="x/y")
    assert json.loads((d / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    _edit_config(d, lambda c: c.__setitem__("eagle_aux_hidden_state_layer_ids", [0, 2, 3]))
    bad = _failed(_validate(d))
    assert "off by one" in bad["aux layer ids"] and "[1, 3, 4]" in bad["aux layer ids"]


def test_shifted_layer_ids_sglang(tmp_path):
    """vLLM's value written into SGLang's eagle_config."""
    d = _export(tmp_path, "sglang", eagle_ids=[0, 2, 3])
    _edit_config(d, lambda c: c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", [1, 3, 4]))
    assert "differ by exactly one" in _failed(_validate(d))["aux layer ids"]
    _edit_config(d, lambda c: c.pop("eagle_aux_hidden_state_layer_ids"))  # no cross-check left: manifest catches it
    bad = _failed(_validate(d))
    assert "off by one" in bad["aux layer ids"] and "write [0, 2, 3]" in _validate(d).get("aux layer ids").fix


def test_wrong_d2t_length(tmp_path):
    d = _export(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("d2t", t["d2t"][:-1].clone()))
    bad = _failed(_validate(d))
    assert f"d2t has {VD - 1} entries but draft_vocab_size is {VD}" in bad["d2t length"]
    assert "vLLM refuses" in bad["d2t length"]


def test_transposed_fc(tmp_path):
    d = _export(tmp_path, ht=48)
    _edit_tensors(d, lambda t: t.__setitem__("fc.weight", t["fc.weight"].t().contiguous()))
    bad = _failed(_validate(d))
    assert "fc.weight is transposed" in bad["fc.weight layout"]
    assert "tensor shapes" not in bad


def test_other_silent_failures(tmp_path):
    d = _export(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.norm.weight", t.pop("norm.weight")))
    bad = _failed(_validate(d))
    assert "'model.' prefix" in bad["unknown tensors"] and "norm.weight" in bad["required tensors"]

    d = _export(tmp_path / "b")

    def flip(t):
        t["t2d"] = t["t2d"].clone()
        i = int(torch.nonzero(t["t2d"])[0])
        t["t2d"][i] = False
        t["t2d"][(i + 1 + int(torch.nonzero(~t["t2d"])[0])) % V] = True  # count stays right, one id moves
    _edit_tensors(d, flip)
    assert "t2d is false at some id + d2t[id]" in _failed(_validate(d))["d2t/t2d"]

    d = _export(tmp_path / "c")
    _edit_config(d, lambda c: c.__setitem__("tie_word_embeddings", True))
    assert "ignores the trained head" in _failed(_validate(d))["tie_word_embeddings"]

    d = _export(tmp_path / "d")
    _edit_config(d, lambda c: c.__setitem__("num_attention_heads", 8))  # config no longer matches weights
    assert "self_attn.q_proj.weight" in _failed(_validate(d))["tensor shapes"]


def test_target_mismatch(tmp_path, target_dir):
    d = _export(tmp_path, ht=48)
    assert "fc expects target hidden 48" in _failed(_validate(d, target_dir))["matches target"]


def test_cli_exit_codes(tmp_path, capsys):
    from specforge.cli import main

    d = _export(tmp_path)
    assert main(["validate", str(d), "--no-decode"]) == 0
    _edit_tensors(d, lambda t: t.pop("lm_head.weight"))
    assert main(["validate", str(d)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "lm_head" in out and "1 check(s) failed" in out


# ------------------------------------------------------------------------------------------------ τ check

@pytest.fixture(scope="module")
def zero_target_dir(tmp_path_factory):
    """A target whose greedy output is always token 0 (final norm weight 0 -> all logits 0 -> argmax 0)."""
    model = tiny_target(seed=1)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    out = tmp_path_factory.mktemp("zero_target")
    model.save_pretrained(out)
    return str(out)


def _draft_predicting(tmp_path, first_target_id):
    """A draft whose logits are all 0 (its norm is 0), so it always proposes draft id 0 = first_target_id."""
    t = draft_tensors(ht=H)
    t["norm.weight"] = torch.zeros(H)
    ids = torch.cat([torch.tensor([first_target_id]), torch.arange(VD - 1) + 100])  # sorted when first < 100
    t["d2t"] = ids - torch.arange(VD)
    t["t2d"] = torch.zeros(V, dtype=torch.bool)
    t["t2d"][ids] = True
    ckpt = write_ckpt(tmp_path / "epoch_0", cfg=draft_config(ht=H), tensors=t)
    out = tmp_path / "sg"
    export(ckpt, out, "sglang")
    return out


def test_tau_passes_for_an_accepted_draft(tmp_path, zero_target_dir):
    d = _draft_predicting(tmp_path, 0)
    report = _validate(d, zero_target_dir, decode=True)
    tau = report.get("greedy decode τ")
    assert report.ok and tau.status == "pass", report.checks
    assert tau.detail.startswith("τ = 5.00")  # 4 draft steps all accepted + the bonus token


def test_tau_fails_for_a_draft_never_accepted(tmp_path, zero_target_dir):
    d = _draft_predicting(tmp_path, 7)
    report = _validate(d, zero_target_dir, decode=True)
    assert _failed(report)["greedy decode τ"].startswith("τ = 1.00: the target never accepts")
    assert all(c.status != "fail" for c in report.checks if c.name != "greedy decode τ")


def test_tau_skipped_without_target(tmp_path):
    report = _validate(_export(tmp_path), None, decode=True)
    assert report.get("greedy decode τ").status == "skip"
