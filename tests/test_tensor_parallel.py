"""Tensor-parallel targets: the seed's layers + registry, sharded safetensors loading, 2-rank gloo
forward equal to the single-process HF forward (logits and the three aux hidden states)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specforge.errors import SpecforgeError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False)


def save_tiny(kind: str, out: Path, **overrides) -> str:
    """A random tiny HF model of ``kind`` (llama | qwen2 | qwen3) saved as safetensors; norms and
    biases perturbed so that a wrongly loaded or unsharded one would show."""
    import transformers as tf

    cfg_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                          "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM)}[kind]
    kw = {**TINY, **({"head_dim": 16} if kind == "qwen3" else {}), **overrides}
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return str(out)


def hf_reference(model_dir: str, ids, att):
    from transformers import AutoModelForCausalLM

    from specforge.modeling.target import HFEagle3TargetModel

    t = HFEagle3TargetModel(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval())
    o = t.generate_eagle3_data(ids, att)
    return {"aux": o.aux_hidden, "last": o.last_hidden, "logits": t.logits(o)}


@pytest.mark.parametrize("kind, extra", [("llama", {}), ("qwen2", {}), ("qwen3", {}),
                                         ("llama", {"tie_word_embeddings": True, "attention_bias": True})])
def test_tp_target_on_one_process_equals_hf(tmp_path, kind, extra):
    from specforge.modeling.loading import load_tp_target
    from specforge.modeling.target import HFEagle3TargetModel
    from tp_worker import tp_inputs

    d = save_tiny(kind, tmp_path / kind, **extra)
    ids, att = tp_inputs()
    model = load_tp_target(d, None, dtype=torch.float32)
    assert all(not p.requires_grad and not p.is_meta for p in model.parameters())
    t = HFEagle3TargetModel(model)
    o = t.generate_eagle3_data(ids, att)
    want, valid = hf_reference(d, ids, att), att.bool()
    torch.testing.assert_close(o.aux_hidden[valid], want["aux"][valid])
    torch.testing.assert_close(t.logits(o)[valid], want["logits"][valid])


def test_two_rank_gloo_tp_forward_equals_hf(tmp_path):
    """torchrun 2 ranks: each holds half of every q/k/v/o and MLP matrix, read straight from the
    safetensors file, and both return HF's logits and aux states."""
    from tp_worker import tp_inputs

    dirs = [save_tiny("llama", tmp_path / "llama"), save_tiny("qwen2", tmp_path / "qwen2")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "tp_worker.py"), str(tmp_path), *dirs]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ids, att = tp_inputs()
    valid = att.bool()
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for d in dirs:
            want = hf_reference(d, ids, att)
            assert got[d]["q_rows"] == TINY["hidden_size"] // 2  # a shard, not the full matrix
            for key in ("aux", "last", "logits"):
                torch.testing.assert_close(got[d][key][valid], want[key][valid], msg=f"rank {r} {d} {key}")


def test_registry_and_layout_errors():
    from transformers import GPT2Config, LlamaConfig, Qwen2Config, Qwen3Config

    from specforge.modeling.auto import AutoDistributedTargetModel
    from specforge.modeling.target.base import check_tp_layout
    from specforge.modeling.target.llama_tp import LlamaTPForCausalLM, Qwen2TPForCausalLM, Qwen3TPForCausalLM

    for cfg, cls in ((LlamaConfig(), LlamaTPForCausalLM), (Qwen2Config(), Qwen2TPForCausalLM),
                     (Qwen3Config(), Qwen3TPForCausalLM)):
        assert AutoDistributedTargetModel._get_model_class(cfg) is cls
    with pytest.raises(SpecforgeError, match="no tensor-parallel target model registered for config class GPT2Config"):
        AutoDistributedTargetModel._get_model_class(GPT2Config())
    check_tp_layout(LlamaConfig(**TINY), 2)
    with pytest.raises(SpecforgeError, match="--tp-size 3 does not divide the target's 4 attention heads"):
        check_tp_layout(LlamaConfig(**TINY), 3)
    with pytest.raises(SpecforgeError, match="key/value heads"):
        check_tp_layout(LlamaConfig(**TINY), 4)


def test_parallel_layers_without_a_group_are_plain_linear_and_load_shards():
    from specforge.layers.linear import ColumnParallelLinear, RowParallelLinear, read_shard

    torch.manual_seed(0)
    w, b, x = torch.randn(6, 4), torch.randn(6), torch.randn(3, 4)
    col = ColumnParallelLinear(4, 6)
    col.load_full_weight("w.weight", w)
    col.load_full_weight("w.bias", b)
    torch.testing.assert_close(col(x), x @ w.T + b)
    row = RowParallelLinear(6, 4, bias=False)
    row.load_full_weight("r.weight", w.T.contiguous())
    torch.testing.assert_close(row(col(x)), (x @ w.T + b) @ w)
    torch.testing.assert_close(read_shard(w, 1, 1, 2), w[:, 2:])
    with pytest.raises(ValueError, match="does not split"):
        read_shard(w, 0, 0, 4)


def test_examples_custom_tp_target_registers_and_matches_hf(monkeypatch, capsys):
    """The README's recipe (examples/custom_tp_target.py) registers a Mistral TP target that the
    auto registry then picks, and its check against HF Mistral passes."""
    import importlib.util

    from transformers import MistralConfig

    from specforge.modeling.auto import AutoDistributedTargetModel

    monkeypatch.setattr(AutoDistributedTargetModel, "_model_mapping", dict(AutoDistributedTargetModel._model_mapping))
    spec = importlib.util.spec_from_file_location("custom_tp_target", REPO / "examples" / "custom_tp_target.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert AutoDistributedTargetModel._get_model_class(MistralConfig()) is mod.MistralTPForCausalLM
    mod._check()
    assert "logits equal HF Mistral" in capsys.readouterr().out
