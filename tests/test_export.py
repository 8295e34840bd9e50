"""`specforge export`: exact engine key sets/shapes, layer-id conventions, round trips, atomic output.

The expected names and shapes below are written out by hand from SGLang's and vLLM's
``llama_eagle3.py`` loaders (docs/EAGLE3.md section 4), independently of ``specforge.export.spec``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from specforge.errors import SpecforgeError

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread avoids OpenMP spin-waits when the 2 cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- tiny draft: H 32, 4 heads x hd 8, 2 KV heads, I 64, target vocab 512, draft vocab 64, target hidden 48
H, NH, KVH, HD, INTER, V, VD, HT = 32, 4, 2, 8, 64, 512, 64, 48
TARGET_LAYERS = 6  # default aux ids for it: [2, 3, 3]


def engine_table(h, nh, kvh, hd, inter, v, vd, ht, layer="midlayer."):
    """name -> (shape, dtype) that SGLang/vLLM's LlamaForCausalLMEagle3 loaders expect (written by hand)."""
    return {
        f"{layer}self_attn.q_proj.weight": ((nh * hd, 2 * h), "float"),
        f"{layer}self_attn.k_proj.weight": ((kvh * hd, 2 * h), "float"),
        f"{layer}self_attn.v_proj.weight": ((kvh * hd, 2 * h), "float"),
        f"{layer}self_attn.o_proj.weight": ((h, nh * hd), "float"),
        f"{layer}mlp.gate_proj.weight": ((inter, h), "float"),
        f"{layer}mlp.up_proj.weight": ((inter, h), "float"),
        f"{layer}mlp.down_proj.weight": ((h, inter), "float"),
        f"{layer}input_layernorm.weight": ((h,), "float"),
        f"{layer}hidden_norm.weight": ((h,), "float"),
        f"{layer}post_attention_layernorm.weight": ((h,), "float"),
        "fc.weight": ((h, 3 * ht), "float"),
        "norm.weight": ((h,), "float"),
        "lm_head.weight": ((vd, h), "float"),
        "d2t": ((vd,), torch.int64),
        "t2d": ((v,), torch.bool),
    }


def random_vocab_map(v, vd, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(v, generator=g)[:vd].sort().values
    t2d = torch.zeros(v, dtype=torch.bool)
    t2d[ids] = True
    return ids - torch.arange(vd), t2d


def draft_config(eagle_ids=None, ht=HT, **over):
    """A trainer-style draft config (LlamaConfig.to_dict + EAGLE-3 fields).

    ``eagle_ids`` go to ``eagle_config.eagle_aux_hidden_state_layer_ids`` the way the trainer stores them
    (SGLang's "output of layer i" = HF hidden_states index minus one).
    """
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=INTER, num_hidden_layers=1,
                      num_attention_heads=NH, num_key_value_heads=KVH, head_dim=HD, max_position_embeddings=256,
                      rms_norm_eps=1e-6, tie_word_embeddings=False).to_dict()
    cfg.update(architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=VD, target_hidden_size=ht)
    if eagle_ids is not None:
        cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(eagle_ids)}
    cfg.update(over)
    return cfg


def draft_tensors(seed=0, ht=HT):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, (shape, kind) in engine_table(H, NH, KVH, HD, INTER, V, VD, ht).items():
        if kind == "float":
            out[k] = torch.randn(*shape, generator=g) * (0.2 if len(shape) == 2 else 1.0) + (0 if len(shape) == 2 else 1)
    out["d2t"], out["t2d"] = random_vocab_map(V, VD, seed)
    return out


def write_ckpt(path: Path, cfg=None, tensors=None, ht=HT) -> Path:
    """A training-checkpoint dir (config.json, model.safetensors, trainer_state/); ``ht`` = target hidden."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg or draft_config(ht=ht)), encoding="utf-8")
    save_file(tensors if tensors is not None else draft_tensors(ht=ht), str(path / "model.safetensors"))
    (path / "trainer_state").mkdir(exist_ok=True)
    return path


def tiny_target(seed: int):
    """A random Llama target (hidden H, vocab V, TARGET_LAYERS layers, untied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=96, num_hidden_layers=TARGET_LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    """A saved random Llama target (hidden H - the draft shares its embedding -, vocab V, 6 layers)."""
    out = tmp_path_factory.mktemp("target")
    tiny_target(seed=0).save_pretrained(out)
    return str(out)


def export(ckpt, out, to, target=None, **opts):
    from specforge.export import ExportOptions, export_draft

    return export_draft(ckpt, out, to, target, ExportOptions(**opts))


def assert_engine_tensors(out: Path, layer: str, src: dict, ht=HT):
    got = load_file(str(out / "model.safetensors"))
    table = engine_table(H, NH, KVH, HD, INTER, V, VD, ht, layer)
    assert set(got) == set(table)  # exactly: nothing missing, nothing extra, no embedding
    for k, (shape, kind) in table.items():
        assert tuple(got[k].shape) == shape, k
        if kind != "float":
            assert got[k].dtype == kind, k
        src_key = k.replace(layer, "midlayer.") if k.startswith(layer) else k
        torch.testing.assert_close(got[k], src[src_key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ layouts

def test_sglang_export_exact_names_and_config(tmp_path):
    src = draft_tensors()
    src["embed_tokens.weight"] = torch.randn(V, H)  # must never be exported
    ckpt = write_ckpt(tmp_path / "epoch_0", tensors=src)
    report = export(ckpt, tmp_path / "sg", "sglang")
    assert report.ok
    out = tmp_path / "sg"
    assert_engine_tensors(out, "midlayer.", src)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (H, NH, KVH, HD)
    assert (cfg["vocab_size"], cfg["draft_vocab_size"], cfg["target_hidden_size"]) == (V, VD, HT)
    assert cfg["num_hidden_layers"] == 1 and cfg["tie_word_embeddings"] is False
    assert cfg["norm_before_residual"] is False and cfg["rope_theta"] == 10000.0
    assert "eagle_config" not in cfg and "eagle_aux_hidden_state_layer_ids" not in cfg
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers


def test_vllm_speculators_export(tmp_path, target_dir):
    ckpt = write_ckpt(tmp_path / "epoch_0", ht=H)
    export(ckpt, tmp_path / "vl", "vllm-speculators", target_dir, num_speculative_tokens=5)
    out = tmp_path / "vl"
    assert_engine_tensors(out, "layers.0.", draft_tensors(ht=H), ht=H)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["speculators_model_type"] == "eagle3"
    assert cfg["norm_before_residual"] is False  # explicit: vLLM defaults it to true
    assert cfg["draft_vocab_size"] == VD and "target_hidden_size" not in cfg  # equal to hidden: omitted
    layer = cfg["transformer_layer_config"]
    assert (layer["hidden_size"], layer["vocab_size"], layer["num_hidden_layers"]) == (H, V, 1)
    assert layer["num_attention_heads"] == NH and layer["num_key_value_heads"] == KVH
    sc = cfg["speculators_config"]
    assert sc["verifier"]["name_or_path"] == str(Path(target_dir).resolve())
    assert sc["verifier"]["architectures"] == ["LlamaForCausalLM"]
    assert sc["proposal_methods"][0]["speculative_tokens"] == 5
    assert "eagle_aux_hidden_state_layer_ids" not in cfg


def test_vllm_speculators_needs_a_verifier(tmp_path):
    ckpt = write_ckpt(tmp_path / "epoch_0")
    with pytest.raises(SpecforgeError, match="verifier"):
        export(ckpt, tmp_path / "vl", "vllm-speculators")
    assert not (tmp_path / "vl").exists()
    export(ckpt, tmp_path / "vl", "vllm-speculators", verifier="meta-llama/Llama-3.1-8B-Instruct")
    cfg = json.loads((tmp_path / "vl" / "config.json").read_text())
    assert cfg["speculators_config"]["verifier"]["name_or_path"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_custom_aux_ids_in_each_engines_convention(tmp_path, target_dir):
    ours = [1, 3, 4]  # HF hidden_states indices = inputs of layers 1, 3, 4 = outputs of layers 0, 2, 3
    ckpt = write_ckpt(tmp_path / "epoch_0", cfg=draft_config(eagle_ids=[0, 2, 3], ht=H), ht=H)
    for to in ("sglang", "vllm-eagle3", "vllm-speculators", "hf"):
        export(ckpt, tmp_path / to, to, target_dir)
    sg = json.loads((tmp_path / "sglang" / "config.json").read_text())
    assert sg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 2, 3]  # SGLang: output of layer i
    assert sg["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]  # vLLM reads the top level first
    ve = json.loads((tmp_path / "vllm-eagle3" / "config.json").read_text())
    assert ve["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    vs = json.loads((tmp_path / "vllm-speculators" / "config.json").read_text())
    assert vs["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 2, 3]  # as the trainer stores them
    from specforge.export import load_source

    for to in ("sglang", "vllm-eagle3", "vllm-speculators", "hf"):  # every layout reads back to ours
        assert load_source(tmp_path / to).aux_ids == ours


def test_default_aux_ids_are_omitted(tmp_path, target_dir):
    default = [2 - 1, TARGET_LAYERS // 2 - 1, TARGET_LAYERS - 3 - 1]  # written the trainer's (SGLang) way
    ckpt = write_ckpt(tmp_path / "epoch_0", cfg=draft_config(eagle_ids=default, ht=H), ht=H)
    for to in ("sglang", "vllm-speculators"):
        export(ckpt, tmp_path / to, to, target_dir)
        cfg = json.loads((tmp_path / to / "config.json").read_text())
        assert "eagle_config" not in cfg and "eagle_aux_hidden_state_layer_ids" not in cfg


def test_out_of_range_aux_ids_refused(tmp_path, target_dir):
    ckpt = write_ckpt(tmp_path / "epoch_0", cfg=draft_config(eagle_ids=[0, 2, TARGET_LAYERS - 1], ht=H), ht=H)
    with pytest.raises(SpecforgeError, match="out of range"):
        export(ckpt, tmp_path / "sg", "sglang", target_dir)


def test_dtype_cast_keeps_index_tensors(tmp_path):
    ckpt = write_ckpt(tmp_path / "epoch_0")
    export(ckpt, tmp_path / "sg", "sglang", dtype="bfloat16")
    got = load_file(str(tmp_path / "sg" / "model.safetensors"))
    assert got["lm_head.weight"].dtype == torch.bfloat16 and got["d2t"].dtype == torch.int64
    assert got["t2d"].dtype == torch.bool
    assert json.loads((tmp_path / "sg" / "config.json").read_text())["torch_dtype"] == "bfloat16"


# ------------------------------------------------------------------------------------------------ safety

def test_broken_checkpoint_is_refused_and_nothing_written(tmp_path):
    t = draft_tensors()
    del t["lm_head.weight"]
    ckpt = write_ckpt(tmp_path / "epoch_0", tensors=t)
    with pytest.raises(SpecforgeError, match="lm_head"):
        export(ckpt, tmp_path / "sg", "sglang")
    assert not (tmp_path / "sg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0"]


def test_output_guards(tmp_path):
    ckpt = write_ckpt(tmp_path / "epoch_0")
    with pytest.raises(SpecforgeError, match="replace the checkpoint"):
        export(ckpt, ckpt, "sglang")
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SpecforgeError, match="not a specforge export"):
        export(ckpt, other, "sglang")
    assert (other / "notes.txt").read_text() == "keep me"
    export(ckpt, tmp_path / "sg", "sglang")
    export(ckpt, tmp_path / "sg", "sglang")  # re-exporting over an earlier export is fine


def test_cli_export_and_validate(tmp_path, capsys):
    from specforge.cli import main

    ckpt = write_ckpt(tmp_path / "epoch_0")
    assert main(["export", "--to", "vllm", "--vllm-layout", "eagle3", "--checkpoint", str(ckpt),
                 "--output-dir", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "specforge_export.json").read_text())["format"] == "vllm-eagle3"
    assert main(["validate", str(tmp_path / "out")]) == 0
    assert "all checks passed" in capsys.readouterr().out
    assert main(["export", "--to", "vllm", "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------------------------------------ 8B shape

def test_llama3_8b_shaped_export_on_meta():
    """The seed's Llama-3.1-8B draft config (configs/llama3-8B-eagle3.json) -> exact engine tensors."""
    from specforge.export import ExportOptions, check_draft, source_from_dict
    from specforge.export.formats import build_sglang, build_vllm_speculators, TargetInfo

    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "draft_vocab_size": 32000,
           "num_hidden_layers": 1, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "tie_word_embeddings": False, "hidden_act": "silu", "model_type": "llama"}
    seed_cfg = Path(__file__).resolve().parents[1] / "configs" / "llama3-8B-eagle3.json"
    if seed_cfg.is_file():  # the shipped seed config must describe the same draft
        shipped = json.loads(seed_cfg.read_text())
        for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size",
                  "draft_vocab_size"):
            assert shipped[k] == cfg[k], k
    table = engine_table(4096, 32, 8, 128, 14336, 128256, 32000, 4096)
    meta = {k: torch.empty(shape, device="meta", dtype=torch.bfloat16 if kind == "float" else kind)
            for k, (shape, kind) in table.items()}
    src = source_from_dict(cfg, meta)
    target = TargetInfo("meta-llama/Llama-3.1-8B-Instruct", ("LlamaForCausalLM",), 32, 4096, 128256, 131072)
    for build, layer in ((build_sglang, "midlayer."), (build_vllm_speculators, "layers.0.")):
        plan = build(src, target, ExportOptions())
        want = engine_table(4096, 32, 8, 128, 14336, 128256, 32000, 4096, layer)
        assert {k: tuple(v.shape) for k, v in plan.tensors.items()} == {k: s for k, (s, _) in want.items()}
        assert plan.tensors["d2t"].dtype == torch.int64 and plan.tensors["t2d"].dtype == torch.bool
        checks = check_draft(plan.config, plan.tensors, plan.layout, plan.manifest, target)
        assert not [c for c in checks if c.status == "fail"], checks
    assert "target_hidden_size" not in plan.config  # equal to hidden: omitted


# ------------------------------------------------------------------------------------------------ round trip

def _logits(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(V, H, generator=g)
    model.load_embedding(emb)
    ids = torch.randint(V, (2, 5), generator=g)
    aux = torch.randn(2, 5, 3 * HT, generator=g)
    pos = torch.arange(5)[None].expand(2, 5)
    with torch.no_grad():
        hidden = model.project_hidden_states(aux)
        out, _ = model.decode_step(model.embed_input_ids(ids), hidden, pos)
        return model.compute_logits(out)


@pytest.mark.parametrize("to", ["sglang", "vllm-eagle3", "vllm-speculators", "hf"])
def test_round_trip_identical_logits(tmp_path, to):
    from transformers import LlamaConfig

    from specforge.export import load_draft
    from specforge.modeling.draft import LlamaForCausalLMEagle3

    cfg = draft_config(eagle_ids=[0, 1, 3])
    ckpt = write_ckpt(tmp_path / "epoch_0", cfg=cfg)
    ref = LlamaForCausalLMEagle3(LlamaConfig(**cfg))  # built straight from the checkpoint, not via export code
    ref.load_checkpoint_state(draft_tensors())
    export(ckpt, tmp_path / "out", to, verifier="some/target")
    model, ids = load_draft(tmp_path / "out")
    assert ids == [1, 2, 4]  # HF hidden_states indices, whatever the layout's convention
    torch.testing.assert_close(model.d2t, ref.d2t, rtol=0, atol=0)
    torch.testing.assert_close(model.t2d, ref.t2d, rtol=0, atol=0)
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=0)


def test_hf_export_loads_with_specforge_loaders(tmp_path):
    """--to hf is read directly by AutoEagle3DraftModel and the target's aux-id logic (the bench's path)."""
    from transformers import LlamaConfig

    from specforge.modeling.auto import AutoDraftModelConfig, AutoEagle3DraftModel
    from specforge.modeling.draft import LlamaForCausalLMEagle3
    from specforge.modeling.target import aux_layer_ids

    cfg = draft_config(eagle_ids=[0, 1, 3])
    ckpt = write_ckpt(tmp_path / "epoch_0", cfg=cfg)
    export(ckpt, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf" / "trainer_state").exists()
    model = AutoEagle3DraftModel.from_pretrained(tmp_path / "hf")
    ref = LlamaForCausalLMEagle3(LlamaConfig(**cfg))
    ref.load_checkpoint_state(draft_tensors())
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=0)
    exported_cfg = AutoDraftModelConfig.from_file(tmp_path / "hf")
    assert aux_layer_ids(TARGET_LAYERS, exported_cfg) == aux_layer_ids(TARGET_LAYERS, cfg) == [1, 2, 4]
