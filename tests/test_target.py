"""HF target backend: aux states are the inputs of the chosen layers; teacher = target logits."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama_config
from transformers import LlamaForCausalLM

from specforge.core.eagle3 import teacher_from_logits
from specforge.errors import SpecforgeError
from specforge.layers import ColumnParallelLinear, RowParallelLinear
from specforge.modeling.loading import load_target_model
from specforge.modeling.target import DistributedTargetModel, HFEagle3TargetModel, aux_layer_ids


def test_aux_layer_ids_default_and_override():
    assert aux_layer_ids(30) == [2, 15, 27]
    assert aux_layer_ids(32) == [2, 16, 29]
    # SGLang convention in the draft config: "output of layer i" -> hidden_states[i + 1]
    assert aux_layer_ids(30, {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 14, 26]}}) == [2, 15, 27]
    with pytest.raises(SpecforgeError, match="layer ids"):
        aux_layer_ids(6, {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 9]}})
    with pytest.raises(SpecforgeError, match="at least 4 layers"):
        aux_layer_ids(2)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=6, vocab_size=200)).eval()
    path = tmp_path_factory.mktemp("tgt")
    model.save_pretrained(path)
    return load_target_model(str(path), dtype="float32")


def test_generate_eagle3_data_matches_layer_inputs_and_logits(target):
    captured = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw, i=i: captured.__setitem__(i, (a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True)
             for i, layer in enumerate(target.model.layers)]
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(1))
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, 6:] = 0
    with torch.no_grad():
        logits = target(input_ids=ids, attention_mask=am).logits
    for h in hooks:
        h.remove()
    backend = HFEagle3TargetModel(target)
    assert backend.layer_ids == [2, 3, 3]
    out = backend.generate_eagle3_data(ids, am)
    assert not out.aux_hidden.requires_grad
    ref = torch.cat([captured[2], captured[3], captured[3]], -1)
    torch.testing.assert_close(out.aux_hidden, ref)
    torch.testing.assert_close(backend.logits(out), logits, rtol=1e-5, atol=1e-5)
    t2d = torch.zeros(200, dtype=torch.bool)
    t2d[::3] = True
    a, b = backend.teacher(out, t2d, chunk=5), teacher_from_logits(logits, t2d)
    torch.testing.assert_close(a.probs, b.probs, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.target_ids, logits.argmax(-1))
    torch.testing.assert_close(backend.input_embedding_weight, target.model.embed_tokens.weight)


def test_distributed_target_interface():
    class MyTP(torch.nn.Module, DistributedTargetModel):
        def __init__(self):
            super().__init__()
            self.up = ColumnParallelLinear(4, 6, bias=False)
            self.down = RowParallelLinear(6, 4, bias=False)

        def load_weights(self, state_dict):
            self.load_state_dict(state_dict)

    m = MyTP()
    sd = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    m.load_weights(sd)
    torch.testing.assert_close(m.up.weight, sd["up.weight"])
    assert m.up.tp_style == "colwise" and m.down.tp_style == "rowwise"
    x = torch.randn(2, 4)
    torch.testing.assert_close(m.down(m.up(x)), x @ sd["up.weight"].T @ sd["down.weight"].T)

    class Incomplete(torch.nn.Module, DistributedTargetModel):
        pass

    with pytest.raises(TypeError):
        Incomplete()
