"""Auto registries: drafts by architectures[0], custom drafts, config derivation, compatibility errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama_config
from safetensors.torch import save_file
from transformers import LlamaConfig, PretrainedConfig

from specforge.errors import SpecforgeError
from specforge.modeling.auto import (
    AutoDistributedTargetModel,
    AutoDraftModelConfig,
    AutoEagle3DraftModel,
    check_draft_target_compat,
    derive_draft_config,
)
from specforge.modeling.draft.base import Eagle3DraftModel
from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
from specforge.modeling.target import DistributedTargetModel


def save_draft(model, path):
    path.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(path / "config.json"))
    save_file(model.state_dict_for_save(), str(path / "model.safetensors"))


def test_shipped_configs_load():
    c = AutoDraftModelConfig.from_file("configs/llama3-8B-eagle3.json")
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (4096, 32, 8, 14336)
    assert (c.vocab_size, c.draft_vocab_size, c.rope_parameters["rope_theta"]) == (128256, 32000, 500000.0)
    s = AutoDraftModelConfig.from_file("configs/smollm2-135m-eagle3.json")
    assert (s.hidden_size, s.num_attention_heads, s.num_key_value_heads, s.head_dim) == (576, 9, 3, 64)
    assert (s.vocab_size, s.draft_vocab_size, s.rope_parameters["rope_theta"]) == (49152, 16384, 100000.0)
    target = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         intermediate_size=1536, vocab_size=49152)
    check_draft_target_compat(s, target)
    assert type(AutoEagle3DraftModel.from_config(s.__class__.from_dict(
        {**s.to_dict(), "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "intermediate_size": 32, "vocab_size": 100, "draft_vocab_size": 50, "target_hidden_size": 64}))) \
        is LlamaForCausalLMEagle3


def test_from_pretrained_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = derive_draft_config(tiny_llama_config(), draft_vocab_size=100)
    d = AutoEagle3DraftModel.from_config(cfg)
    save_draft(d, tmp_path / "epoch_0")
    saved = json.loads((tmp_path / "epoch_0" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLMEagle3"] and saved["draft_vocab_size"] == 100
    back = AutoEagle3DraftModel.from_pretrained(tmp_path / "epoch_0")
    assert isinstance(back, LlamaForCausalLMEagle3)
    for k, v in d.state_dict_for_save().items():
        torch.testing.assert_close(back.state_dict()[k], v)


def test_from_pretrained_errors(tmp_path):
    d = AutoEagle3DraftModel.from_config(derive_draft_config(tiny_llama_config(), 100))
    save_draft(d, tmp_path)
    sd = d.state_dict_for_save()
    del sd["lm_head.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(SpecforgeError, match="missing.*lm_head.weight"):
        AutoEagle3DraftModel.from_pretrained(tmp_path)
    with pytest.raises(SpecforgeError, match="no model.safetensors"):
        AutoEagle3DraftModel.from_pretrained(tmp_path / "nowhere")


def test_unknown_architecture_and_bad_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"architectures": ["FooEagle3"], "hidden_size": 8}))
    with pytest.raises(SpecforgeError, match="unknown draft architecture 'FooEagle3'.*LlamaForCausalLMEagle3"):
        AutoDraftModelConfig.from_file(p)
    p.write_text("{not json")
    with pytest.raises(SpecforgeError, match="not valid JSON"):
        AutoDraftModelConfig.from_file(p)
    with pytest.raises(SpecforgeError, match="does not exist"):
        AutoDraftModelConfig.from_file(tmp_path / "missing.json")


def test_derive_draft_config_from_target():
    t = tiny_llama_config(vocab_size=50000, rope_theta=12345.0, max_position_embeddings=777, rms_norm_eps=1e-5)
    c = derive_draft_config(t)
    assert c.architectures == ["LlamaForCausalLMEagle3"] and c.num_hidden_layers == 1
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == \
        (64, 4, 2, 16, 128)
    assert (c.draft_vocab_size, c.vocab_size, c.max_position_embeddings, c.rms_norm_eps) == (32000, 50000, 777, 1e-5)
    assert c.rope_parameters["rope_theta"] == 12345.0
    assert derive_draft_config(tiny_llama_config()).draft_vocab_size == 512  # capped by the target vocab
    check_draft_target_compat(c, t)
    with pytest.raises(SpecforgeError, match="draft_vocab_size"):
        derive_draft_config(t, draft_vocab_size=60000)


def test_incompatible_draft_and_target():
    t = tiny_llama_config()
    bad_h = derive_draft_config(tiny_llama_config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(SpecforgeError, match="hidden size 32 but the target has 64"):
        check_draft_target_compat(bad_h, t)
    bad_v = derive_draft_config(tiny_llama_config(vocab_size=300))
    with pytest.raises(SpecforgeError, match="vocab_size 300 differs from the target's 512"):
        check_draft_target_compat(bad_v, t)


class MyModelConfig(PretrainedConfig):
    model_type = "mymodel-test"

    def __init__(self, hidden_size=16, vocab_size=30, draft_vocab_size=20, target_hidden_size=16, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.draft_vocab_size, self.target_hidden_size = draft_vocab_size, target_hidden_size


class MyModelEagle3(Eagle3DraftModel):
    """The seed's custom draft: a different backbone (an MLP), same interface."""

    config_class = MyModelConfig

    def __init__(self, config, quant_config=None) -> None:
        super().__init__(config)
        H = config.hidden_size
        self.embed_tokens = torch.nn.Embedding(config.vocab_size, H)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = torch.nn.Linear(3 * config.target_hidden_size, H, bias=False)
        self.mix = torch.nn.Linear(2 * H, H)
        self.lm_head = torch.nn.Linear(H, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.arange(config.vocab_size) < config.draft_vocab_size)

    def project_hidden_states(self, aux_hidden):
        return self.fc(aux_hidden)

    def compute_logits(self, hidden):
        return self.lm_head(hidden)

    def decode_step(self, input_embeds, hidden, position_ids, past_kv=None, attn_mask=None):
        return hidden + self.mix(torch.cat([input_embeds, hidden], -1)), (hidden[:, None], hidden[:, None])

    def ttt_step(self, input_embeds, hidden, position_ids, cache, attention_mask, backend):
        return self.decode_step(input_embeds, hidden, position_ids)[0]


def test_custom_draft_registered_and_chosen_by_architecture(tmp_path, monkeypatch):
    from specforge.core.eagle3 import Eagle3TTT

    monkeypatch.setitem(AutoEagle3DraftModel._model_mapping, MyModelConfig, MyModelEagle3)
    monkeypatch.setitem(AutoDraftModelConfig._config_mapping, "MyModelEagle3", MyModelConfig)
    cfg = MyModelConfig(architectures=["MyModelEagle3"])
    torch.manual_seed(0)
    d = AutoEagle3DraftModel.from_config(cfg)
    assert type(d) is MyModelEagle3
    save_draft(d, tmp_path / "ck")
    assert AutoDraftModelConfig.from_file(tmp_path / "ck" / "config.json").__class__ is MyModelConfig
    back = AutoEagle3DraftModel.from_pretrained(tmp_path / "ck")
    assert type(back) is MyModelEagle3
    torch.testing.assert_close(back.mix.weight, d.mix.weight)
    # the generic TTT runs on it through compute_logits (no fused head)
    B, L = 1, 6
    loss, m = Eagle3TTT(back, ttt_length=2)(torch.randint(0, 30, (B, L)), None, torch.ones(B, L),
                                           torch.randn(B, L, 48), torch.randn(B, L, 30))
    loss.backward()
    assert back.lm_head.weight.grad is not None and torch.isfinite(loss)


def test_distributed_target_registry(monkeypatch):
    from transformers import GPT2Config

    with pytest.raises(SpecforgeError, match="no tensor-parallel target model registered for config class GPT2Config"):
        AutoDistributedTargetModel.from_config(GPT2Config())

    class MyTP(torch.nn.Module, DistributedTargetModel):
        def __init__(self, config):
            super().__init__()
            self.config = config

        def load_weights(self, state_dict):
            pass

    monkeypatch.setitem(AutoDistributedTargetModel._model_mapping, LlamaConfig, [MyTP])
    assert isinstance(AutoDistributedTargetModel.from_config(tiny_llama_config()), MyTP)
