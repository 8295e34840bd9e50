"""`specforge export --to gguf`: llama.cpp's EAGLE-3 GGUF layout, checked against a table written by hand.

The expected keys, tensor names, shapes and conventions below were read off llama.cpp's converter
(``conversion/llama.py``: ``is_eagle3``, ``permute``, absolute ``d2t``) and loader (``src/models/eagle3.cpp``,
and the key strings of the ``xllamacpp`` wheel's build), independently of ``specforge.export.gguf``. The
target is the real default model's GGUF (only its header and vocabulary are read).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from specforge.errors import SpecforgeError

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# SmolLM2-135M target: 30 layers, hidden 576, vocab 49152. Draft: its H/heads, a small MLP and draft vocab.
H, NH, KVH, HD, INTER, V, VD, L = 576, 9, 3, 64, 64, 49152, 256, 30


@pytest.fixture(scope="module")
def target_gguf():
    from specforge.modeling.loading import DEFAULT_TARGET, OFFLINE_MODELS

    return OFFLINE_MODELS[DEFAULT_TARGET].gguf_files()[0]


def draft_ckpt(path: Path, seed=0, eagle_ids=None, **cfg_over) -> tuple[Path, dict]:
    g = torch.Generator().manual_seed(seed)
    def mat(*s):
        return torch.randn(*s, generator=g) * 0.05

    ids = torch.randperm(V, generator=g)[:VD].sort().values
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[ids] = True
    t = {
        "midlayer.self_attn.q_proj.weight": mat(NH * HD, 2 * H), "midlayer.self_attn.k_proj.weight": mat(KVH * HD, 2 * H),
        "midlayer.self_attn.v_proj.weight": mat(KVH * HD, 2 * H), "midlayer.self_attn.o_proj.weight": mat(H, NH * HD),
        "midlayer.mlp.gate_proj.weight": mat(INTER, H), "midlayer.mlp.up_proj.weight": mat(INTER, H),
        "midlayer.mlp.down_proj.weight": mat(H, INTER), "midlayer.input_layernorm.weight": 1 + mat(H),
        "midlayer.hidden_norm.weight": 1 + mat(H), "midlayer.post_attention_layernorm.weight": 1 + mat(H),
        "fc.weight": mat(H, 3 * H), "norm.weight": 1 + mat(H), "lm_head.weight": mat(VD, H),
        "d2t": ids - torch.arange(VD), "t2d": t2d,
    }
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": INTER, "num_attention_heads": NH, "num_key_value_heads": KVH, "head_dim": HD,
           "num_hidden_layers": 1, "vocab_size": V, "draft_vocab_size": VD, "target_hidden_size": H,
           "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192}
    if eagle_ids is not None:
        cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": eagle_ids}
    cfg.update(cfg_over)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(t, str(path / "model.safetensors"))
    return path, t


def llama_cpp_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reference: within each head, row 2i <- row i and row 2i+1 <- row hd/2 + i (interleaved RoPE pairs)."""
    hd = w.shape[0] // n_head
    out = torch.empty_like(w)
    for h in range(n_head):
        for i in range(hd // 2):
            out[h * hd + 2 * i] = w[h * hd + i]
            out[h * hd + 2 * i + 1] = w[h * hd + hd // 2 + i]
    return out


# name -> (numpy shape, ggml type) that llama.cpp's eagle3 loader creates (written out by hand)
def llama_cpp_table():
    return {
        "fc.weight": ((H, 3 * H), "F32"),
        "blk.0.attn_norm.weight": ((H,), "F32"), "blk.0.attn_norm_2.weight": ((H,), "F32"),
        "blk.0.attn_q.weight": ((NH * HD, 2 * H), "F32"), "blk.0.attn_k.weight": ((KVH * HD, 2 * H), "F32"),
        "blk.0.attn_v.weight": ((KVH * HD, 2 * H), "F32"), "blk.0.attn_output.weight": ((H, NH * HD), "F32"),
        "blk.0.ffn_norm.weight": ((H,), "F32"), "blk.0.ffn_gate.weight": ((INTER, H), "F32"),
        "blk.0.ffn_up.weight": ((INTER, H), "F32"), "blk.0.ffn_down.weight": ((H, INTER), "F32"),
        "output_norm.weight": ((H,), "F32"), "output.weight": ((VD, H), "F32"), "d2t": ((VD,), "I64"),
    }


def read(path):
    """(metadata, tensors) via specforge's header parser (checked against gguf.GGUFReader below)."""
    from specforge.export.gguf_header import read_header

    h = read_header(path)
    return h.values, {name: (info, path) for name, info in h.tensors.items()}


GGML = {0: ("F32", "<f4"), 1: ("F16", "<f2"), 27: ("I64", "<i8")}


def gtype(t):
    return GGML[t[0].ggml_type][0]


def as_torch(t):
    info, path = t
    n = int(np.prod(info.shape))
    return torch.from_numpy(np.fromfile(str(path), GGML[info.ggml_type][1], n, offset=info.offset).reshape(info.shape))


def test_header_parser_agrees_with_gguf_reader(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), arch="eagle3")
    w.add_uint32("eagle3.block_count", 1)
    w.add_array("eagle3.target_layers", [2, 15, 27])
    w.add_bool("eagle3.norm_before_residual", False)
    w.add_float32("eagle3.rope.freq_base", 1e5)
    w.add_array("tokenizer.ggml.tokens", ["a", "bc", "<|im_end|>"])
    w.add_tensor("d2t", np.array([3, 5, 9], dtype=np.int64), raw_dtype=gguf.GGMLQuantizationType.I64)
    w.add_tensor("output.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    r = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    keys, tensors = read(tmp_path / "t.gguf")
    assert keys == {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    for t in r.tensors:
        assert tensors[t.name][0].shape == tuple(int(x) for x in reversed(t.shape))
        assert torch.equal(as_torch(tensors[t.name]), torch.from_numpy(np.array(t.data)))


def test_gguf_layout_matches_llama_cpp(tmp_path, target_gguf):
    from specforge.export import ExportOptions, export_gguf

    ckpt, src = draft_ckpt(tmp_path / "epoch_0")
    out = export_gguf(ckpt, tmp_path / "draft.gguf", "smollm2-135m", options=ExportOptions(dtype="float32"))
    keys, tensors = read(out)
    table = llama_cpp_table()
    assert set(tensors) == set(table)  # exactly: no token_embd, no t2d, nothing missing
    for name, (shape, gt) in table.items():
        assert tensors[name][0].shape == shape, name
        assert gtype(tensors[name]) == gt, name
    # d2t: absolute target ids (llama.cpp scatters logits to d2t[i]); specforge stores offsets
    d2t = as_torch(tensors["d2t"])
    assert torch.equal(d2t, src["d2t"] + torch.arange(VD))
    assert torch.equal(torch.nonzero(src["t2d"]).flatten(), d2t)
    # q/k rows in llama.cpp's RoPE order, everything else verbatim
    torch.testing.assert_close(as_torch(tensors["blk.0.attn_q.weight"]),
                               llama_cpp_rope_rows(src["midlayer.self_attn.q_proj.weight"], NH), rtol=0, atol=0)
    torch.testing.assert_close(as_torch(tensors["blk.0.attn_k.weight"]),
                               llama_cpp_rope_rows(src["midlayer.self_attn.k_proj.weight"], KVH), rtol=0, atol=0)
    for ours, theirs in [("midlayer.self_attn.v_proj.weight", "blk.0.attn_v.weight"),
                         ("midlayer.hidden_norm.weight", "blk.0.attn_norm_2.weight"),
                         ("midlayer.input_layernorm.weight", "blk.0.attn_norm.weight"),
                         ("midlayer.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
                         ("norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight"),
                         ("fc.weight", "fc.weight"), ("midlayer.mlp.down_proj.weight", "blk.0.ffn_down.weight")]:
        torch.testing.assert_close(as_torch(tensors[theirs]), src[ours], rtol=0, atol=0, msg=theirs)
    # metadata: arch eagle3, input-of-layer ids for a 30-layer target, sizes, the target's vocabulary
    assert keys["general.architecture"] == "eagle3"
    assert keys["eagle3.target_layers"] == keys["eagle3.extract_layers"] == [2, 15, 27]
    expect = {"eagle3.block_count": 1, "eagle3.embedding_length": H, "eagle3.feed_forward_length": INTER,
              "eagle3.attention.head_count": NH, "eagle3.attention.head_count_kv": KVH,
              "eagle3.rope.dimension_count": HD, "eagle3.vocab_size": V, "eagle3.target_hidden_size": H,
              "eagle3.norm_before_residual": False}
    assert {k: keys[k] for k in expect} == expect
    assert keys["eagle3.rope.freq_base"] == pytest.approx(1e5)
    assert keys["eagle3.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    tk, _ = read(target_gguf)
    for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token"):
        assert keys[k] == tk[k], k
    assert len(keys["tokenizer.ggml.tokens"]) == V and keys["tokenizer.ggml.tokens"][:50] == tk["tokenizer.ggml.tokens"][:50]


def test_custom_layer_ids_and_f16(tmp_path):
    from specforge.export import ExportOptions, export_gguf

    # the trainer stores SGLang's "output of layer i"; llama.cpp wants "input of layer i" (= +1)
    ckpt, _ = draft_ckpt(tmp_path / "c", eagle_ids=[0, 9, 19])
    out = export_gguf(ckpt, tmp_path / "d.gguf", "smollm2-135m", options=ExportOptions(dtype="float16"))
    keys, tensors = read(out)
    assert keys["eagle3.target_layers"] == [1, 10, 20]
    assert gtype(tensors["blk.0.attn_q.weight"]) == "F16"
    assert gtype(tensors["blk.0.attn_norm.weight"]) == "F32"
    assert gtype(tensors["d2t"]) == "I64"


def test_check_gguf_catches_missing_tensor_and_offset_d2t(tmp_path, target_gguf):
    from specforge.export import ExportOptions, check_gguf, load_source
    from specforge.export.gguf import build_gguf, target_info_from_gguf, write_gguf

    ckpt, src = draft_ckpt(tmp_path / "c")
    target = target_info_from_gguf(target_gguf)
    plan = build_gguf(load_source(ckpt), target, ExportOptions(dtype="float16"))
    write_gguf(plan, tmp_path / "ok.gguf", target_gguf)
    assert check_gguf(tmp_path / "ok.gguf", target) == []
    plan.tensors.pop("output.weight")
    write_gguf(plan, tmp_path / "no_head.gguf", target_gguf)
    assert "tensor output.weight missing" in check_gguf(tmp_path / "no_head.gguf")
    plan.tensors["output.weight"] = torch.zeros(VD, H, dtype=torch.float16)
    plan.tensors["d2t"] = src["d2t"]  # specforge's offsets instead of absolute ids: duplicates (many 0s)
    write_gguf(plan, tmp_path / "rel.gguf", target_gguf)
    assert any("d2t" in p for p in check_gguf(tmp_path / "rel.gguf"))


@pytest.mark.parametrize("over, needle", [
    ({"norm_before_fc": True}, "EAGLE-3.1"),
    ({"norm_output": True}, "EAGLE-3.1"),
    ({"attention_bias": True}, "bias"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling"),
])
def test_unsupported_drafts_refused_without_a_file(tmp_path, over, needle):
    from specforge.cli import main

    ckpt, _ = draft_ckpt(tmp_path / "c", **over)
    out = tmp_path / "x" / "d.gguf"
    with pytest.raises(SpecforgeError, match=needle):
        from specforge.export import export_gguf

        export_gguf(ckpt, out, "smollm2-135m")
    assert main(["export", "--to", "gguf", "--checkpoint", str(ckpt), "--target-model-path", "smollm2-135m",
                 "--output", str(out)]) == 2
    assert not out.exists() and not out.parent.exists()


def test_cli_gguf_and_its_bad_inputs(tmp_path, capsys):
    from specforge.cli import main

    ckpt, _ = draft_ckpt(tmp_path / "c")
    out = tmp_path / "d.gguf"
    base = ["export", "--to", "gguf", "--checkpoint", str(ckpt)]
    assert main(base + ["--target-model-path", "smollm2-135m", "--output", str(out)]) == 0
    assert "draft-eagle3" in capsys.readouterr().out and out.is_file()
    # exists (no --force), not .gguf, --output-dir, a target with no GGUF, a draft for another target size
    assert main(base + ["--target-model-path", "smollm2-135m", "--output", str(out)]) == 2
    assert main(base + ["--target-model-path", "smollm2-135m", "--output", str(tmp_path / "d.bin")]) == 2
    assert main(base + ["--target-model-path", "smollm2-135m", "--output-dir", str(tmp_path / "o")]) == 2
    assert main(base + ["--target-model-path", str(tmp_path), "--output", str(tmp_path / "e.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if e.startswith("error:")]) == 4
    assert not (tmp_path / "d.bin").exists() and not (tmp_path / "e.gguf").exists()


def test_draft_for_another_target_refused(tmp_path):
    from specforge.export import ExportOptions, TargetInfo, load_source
    from specforge.export.gguf import build_gguf

    src = load_source(draft_ckpt(tmp_path / "c")[0])
    with pytest.raises(SpecforgeError, match="token embedding"):  # llama.cpp embeds with the target's table
        build_gguf(src, TargetInfo("t.gguf", ("qwen2",), 24, 896, V), ExportOptions())
    with pytest.raises(SpecforgeError, match="vocab"):
        build_gguf(src, TargetInfo("t.gguf", ("llama",), 30, H, 151936), ExportOptions())
    with pytest.raises(SpecforgeError, match="needs the target"):
        build_gguf(src, None, ExportOptions())
