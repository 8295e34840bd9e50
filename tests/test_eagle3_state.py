"""The checkpoint description derived from the model (meta device) against names and shapes written by hand.

The table below is written out from the engines' EAGLE-3 loaders (docs/EAGLE3.md sections 1 and 4), not from
specforge code, so the validator (which uses the derived description) stays independent of a model bug.
"""

from __future__ import annotations

import pytest

from specforge.eagle3.config import Eagle3Config
from specforge.eagle3.state import checkpoint_tensors
from specforge.errors import SpecforgeError

H, NH, KVH, HD, INTER, V, VD, HT = 32, 4, 2, 8, 64, 512, 64, 48


def config(**over):
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": H, "num_attention_heads": NH,
           "num_key_value_heads": KVH, "head_dim": HD, "intermediate_size": INTER, "vocab_size": V,
           "draft_vocab_size": VD, "target_hidden_size": HT, "num_hidden_layers": 1, "rms_norm_eps": 1e-6,
           "max_position_embeddings": 256}
    cfg.update(over)
    return cfg


def layer_table(prefix: str, first: bool) -> dict:
    d_in = 2 * H if first else H
    out = {
        f"{prefix}self_attn.q_proj.weight": ((NH * HD, d_in), "float"),
        f"{prefix}self_attn.k_proj.weight": ((KVH * HD, d_in), "float"),
        f"{prefix}self_attn.v_proj.weight": ((KVH * HD, d_in), "float"),
        f"{prefix}self_attn.o_proj.weight": ((H, NH * HD), "float"),
        f"{prefix}mlp.gate_proj.weight": ((INTER, H), "float"),
        f"{prefix}mlp.up_proj.weight": ((INTER, H), "float"),
        f"{prefix}mlp.down_proj.weight": ((H, INTER), "float"),
        f"{prefix}input_layernorm.weight": ((H,), "float"),
        f"{prefix}post_attention_layernorm.weight": ((H,), "float"),
    }
    if first:
        out[f"{prefix}hidden_norm.weight"] = ((H,), "float")
    return out


BASE = {
    **layer_table("midlayer.", True),
    "fc.weight": ((H, 3 * HT), "float"),
    "norm.weight": ((H,), "float"),
    "lm_head.weight": ((VD, H), "float"),
    "d2t": ((VD,), "int64"),
    "t2d": ((V,), "bool"),
}


def test_plain_draft_tensors_are_pinned():
    assert checkpoint_tensors(config()) == BASE


def test_norm_before_fc_adds_one_norm_over_the_concatenated_aux_states():
    assert checkpoint_tensors(config(norm_before_fc=True)) == {**BASE, "input_norm.weight": ((3 * HT,), "float")}


def test_fc_norm_adds_one_norm_per_aux_state():
    want = {**BASE, **{f"fc_norm.{i}.weight": ((HT,), "float") for i in range(3)}}
    assert checkpoint_tensors(config(fc_norm=True)) == want


def test_norm_output_has_no_tensor():
    assert checkpoint_tensors(config(norm_output=True)) == BASE


def test_later_layers_read_h_not_2h():
    want = {**BASE, **layer_table("layers.1.", False), **layer_table("layers.2.", False)}
    assert checkpoint_tensors(config(num_hidden_layers=3)) == want


@pytest.mark.parametrize("over, msg", [
    ({"draft_vocab_size": V + 1}, "exceeds vocab_size"),
    ({"norm_output": "yes"}, "norm_output must be true or false"),
    ({"eagle_aux_hidden_state_layer_ids": [1, 2]}, "EAGLE-3 reads exactly 3"),
    ({"num_hidden_layers": -1}, "num_hidden_layers must be a positive integer"),
])
def test_config_is_validated_on_construction(over, msg):
    with pytest.raises(SpecforgeError, match=msg):
        Eagle3Config.from_dict(config(**over))


def test_config_conventions():
    from specforge.eagle3.config import (
        aux_layer_ids,
        default_draft_vocab_size,
        from_sglang_ids,
        to_sglang_ids,
    )

    assert default_draft_vocab_size(49152) == 32000 and default_draft_vocab_size(512) == 512
    assert aux_layer_ids(30) == [2, 15, 27]
    assert to_sglang_ids([2, 15, 27]) == [1, 14, 26] and from_sglang_ids([1, 14, 26]) == [2, 15, 27]
    # SGLang's field ("output of layer i") is read as index + 1; vLLM's top-level one as is
    assert aux_layer_ids(30, {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 5, 9]}}) == [2, 6, 10]
    assert aux_layer_ids(30, {"eagle_aux_hidden_state_layer_ids": [1, 5, 9]}) == [1, 5, 9]
    e3 = Eagle3Config.from_dict(config(eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 5, 9]}))
    assert e3.aux_layer_ids == (2, 6, 10) and e3.num_key_value_heads == KVH and e3.options == {}
