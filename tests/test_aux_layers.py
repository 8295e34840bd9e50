"""One function decides the target's aux layers for train, bench, validate and export (issue 13)."""

from __future__ import annotations

import json

import pytest
import torch

from specforge.errors import SpecforgeError
from specforge.modeling.target import aux_layer_ids

IDS = [3, 1, 2]  # HF hidden_states indices = inputs of layers (vLLM's top-level convention); not the default


def test_top_level_vllm_ids_are_inputs_of_layers():
    assert aux_layer_ids(30, {"eagle_aux_hidden_state_layer_ids": [3, 10, 20]}) == [3, 10, 20]
    # SGLang's eagle_config ids are outputs of layers (+1); both written consistently -> same layers
    both = {"eagle_aux_hidden_state_layer_ids": [3, 10, 20], "eagle_config": {"eagle_aux_hidden_state_layer_ids": [2, 9, 19]}}
    assert aux_layer_ids(30, both) == [3, 10, 20]
    with pytest.raises(SpecforgeError, match="different layers"):
        aux_layer_ids(30, {"eagle_aux_hidden_state_layer_ids": [3, 10, 20],
                           "eagle_config": {"eagle_aux_hidden_state_layer_ids": [3, 10, 20]}})
    with pytest.raises(SpecforgeError, match="1..29"):
        aux_layer_ids(30, {"eagle_aux_hidden_state_layer_ids": [0, 10, 20]})


def test_every_stage_reads_the_same_layers_from_a_top_level_only_config(tmp_path, tiny_target_dir):
    """A draft config with only the top-level ids: train's target wrapper, the bench's draft loader,
    validate's τ check and every export layout all use hidden_states IDS (train used the defaults)."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from specforge.bench.runner import BenchOptions, _load_draft
    from specforge.cli import main
    from specforge.export import formats, load_draft
    from specforge.export.roundtrip import aux_ids_for
    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config
    from specforge.modeling.loading import load_config
    from specforge.modeling.target import HFEagle3TargetModel
    from specforge.train.components import build_draft_config

    target_cfg = load_config(tiny_target_dir)
    assert aux_layer_ids(target_cfg.num_hidden_layers) != IDS
    cfg_file = tmp_path / "draft.json"
    cfg = derive_draft_config(target_cfg, draft_vocab_size=2000).to_dict()
    cfg.pop("eagle_config", None)
    cfg["eagle_aux_hidden_state_layer_ids"] = IDS
    cfg_file.write_text(json.dumps(cfg))

    # train: the draft config as the trainer builds it, and the target wrapper that feeds the draft
    dcfg = build_draft_config(str(cfg_file), None, target_cfg)
    target = LlamaForCausalLM.from_pretrained(tiny_target_dir).eval()
    assert HFEagle3TargetModel(target, draft_config=dcfg).layer_ids == IDS

    # the checkpoint the trainer writes (its config is the draft config)
    ckpt = tmp_path / "epoch_0"
    dcfg.save_pretrained(ckpt)
    torch.manual_seed(0)
    save_file(AutoEagle3DraftModel.from_config(dcfg).state_dict_for_save(), str(ckpt / "model.safetensors"))

    # bench
    opts = BenchOptions(model_path=tiny_target_dir, draft_path=str(ckpt), configs=[(1, 3, 1, 4)],
                        benchmarks=["gsm8k:1"], output=str(tmp_path / "o.jsonl"))
    assert _load_draft(opts, target, "cpu", torch.float32)[1] == IDS
    # validate (its τ check decodes with aux_ids_for)
    assert aux_ids_for(formats.load_source(ckpt), target_cfg.num_hidden_layers) == IDS
    # export: every layout carries the same layers, in its engine's convention
    for to in ("sglang", "vllm"):
        out = tmp_path / to
        assert main(["export", "--to", to, "--checkpoint", str(ckpt), "--output-dir", str(out),
                     "--target-model-path", tiny_target_dir]) == 0
        assert list(load_draft(out)[1]) == IDS
        exported = json.loads((out / "config.json").read_text())
        assert aux_layer_ids(target_cfg.num_hidden_layers, exported) == IDS


