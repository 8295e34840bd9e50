"""Target-side interfaces: the TP target base class and which target states feed the draft."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from specforge.errors import SpecforgeError


class DistributedTargetModel(ABC):
    """Mixin for tensor-parallel target models (the seed's ``MyModelForCausalLM(..., DistributedTargetModel)``).

    A subclass builds its layers from :mod:`specforge.layers.linear` (passing the ``tp_group`` it is
    constructed with), names its parameters like the HF checkpoint, exposes ``config``,
    ``base_model_prefix`` (its decoder attribute, called with ``output_hidden_states=True``) and
    ``get_input_embeddings`` / ``get_output_embeddings``, and registers in
    ``specforge.modeling.auto.AutoDistributedTargetModel._model_mapping``; it is picked when
    ``--tp-size > 1``. A subclass must define :meth:`load_weights`; for HF-named checkpoints it can
    simply call :meth:`load_hf_weights`.
    """

    @abstractmethod
    def load_weights(self, state_dict) -> None:
        """Load the full (unsharded) checkpoint ``state_dict`` (name -> tensor, or name -> lazy
        ``safetensors`` slice) into this rank's shards."""

    def load_hf_weights(self, state_dict) -> None:
        """The usual :meth:`load_weights`: checkpoint names equal this model's parameter names.

        Modules with ``load_full_weight(name, full)`` (the parallel layers) take only their shard; every
        other parameter is copied whole. Tied output embeddings (``tie_word_embeddings`` and no
        ``lm_head.weight`` in the checkpoint) share the input embedding. Raises ``SpecforgeError`` on a
        missing or unknown parameter or a shape mismatch.
        """
        modules = dict(self.named_modules())  # type: ignore[attr-defined]
        params = dict(self.named_parameters())  # type: ignore[attr-defined]
        loaded = set()
        for name in state_dict.keys():
            if name not in params:
                if name.endswith((".inv_freq", "rotary_emb.inv_freq")):
                    continue
                raise SpecforgeError(f"checkpoint tensor {name} has no place in {type(self).__name__}; "
                                     "override load_weights to map its names.")
            mod_name, _, leaf = name.rpartition(".")
            module = modules[mod_name]
            value = state_dict[name]
            try:
                if hasattr(module, "load_full_weight"):
                    module.load_full_weight(name, value)
                else:
                    full = value[:] if not isinstance(value, torch.Tensor) else value
                    param = params[name]
                    if tuple(full.shape) != tuple(param.shape):
                        raise ValueError(f"{name}: checkpoint {tuple(full.shape)} vs parameter {tuple(param.shape)}")
                    with torch.no_grad():
                        param.copy_(full.to(dtype=param.dtype, device=param.device))
            except ValueError as e:
                raise SpecforgeError(f"cannot load {name} into {type(self).__name__}: {e}") from None
            loaded.add(name)
        out_emb, in_emb = self.get_output_embeddings(), self.get_input_embeddings()  # type: ignore[attr-defined]
        cfg = getattr(self, "config", None)
        out_name = next((n for n, p in params.items() if p is out_emb.weight), None)
        if out_name is not None and out_name not in loaded and getattr(cfg, "tie_word_embeddings", False):
            out_emb.weight = in_emb.weight
            loaded.add(out_name)
        missing = sorted(set(params) - loaded)
        if missing:
            raise SpecforgeError(f"the checkpoint lacks {len(missing)} tensors of {type(self).__name__} "
                                 f"(first: {missing[0]}); is it the model the config describes?")


def check_tp_layout(config, tp_size: int) -> None:
    """One clear line when ``tp_size`` cannot split this (Llama-like) config's heads or MLP."""
    t = config.get_text_config() if hasattr(config, "get_text_config") else config
    nh = getattr(t, "num_attention_heads", None)
    nkv = getattr(t, "num_key_value_heads", None) or nh
    for what, n in (("attention heads", nh), ("key/value heads", nkv),
                    ("MLP channels (intermediate_size)", getattr(t, "intermediate_size", None))):
        if n is not None and n % tp_size:
            raise SpecforgeError(f"--tp-size {tp_size} does not divide the target's {n} {what}; "
                                 f"use a --tp-size that divides {n}.")
    if any(lt != "full_attention" for lt in (getattr(t, "layer_types", None) or [])):
        raise SpecforgeError("the tensor-parallel target does not implement sliding-window layers "
                             f"(layer_types of {type(t).__name__}); use --tp-size 1.")


def _config_dict(draft_config) -> dict:
    if draft_config is None:
        return {}
    if isinstance(draft_config, dict):
        return draft_config
    return draft_config.to_dict() if hasattr(draft_config, "to_dict") else dict(vars(draft_config))


def aux_layer_ids(num_layers: int, draft_config=None) -> list[int]:
    """Indices into HF ``output_hidden_states`` (``hidden_states[i]`` = input of layer i) of the 3 aux states.

    The one function that decides the target layers for every stage (train, bench, validate, export
    round trips), from a draft config (object or dict) in any layout specforge reads:

    * ``eagle_config.eagle_aux_hidden_state_layer_ids`` (SGLang, "output of layer i": id ``i`` -> index ``i+1``;
      specforge writes it);
    * else the top-level ``eagle_aux_hidden_state_layer_ids`` (vLLM / speculators, "input of layer i" = index);
    * else the default ``[2, L//2, L-3]`` (inputs of layers 2, L//2, L-3 = outputs of layers 1, L//2-1, L-4).

    Both fields present but naming different layers is an error (one engine would read layers off by one).
    """
    from specforge.export.spec import from_sglang_ids, specforge_aux_ids

    cfg = _config_dict(draft_config)
    layout = "vllm-speculators" if cfg.get("speculators_model_type") is not None else "eagle3"
    ids = specforge_aux_ids(cfg, layout)
    top = cfg.get("eagle_aux_hidden_state_layer_ids")
    sg = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if layout == "eagle3" and top and sg and list(top) != from_sglang_ids(list(sg)):
        raise SpecforgeError(
            f"draft config: eagle_config.eagle_aux_hidden_state_layer_ids {list(sg)} (output of layer i) and "
            f"top-level eagle_aux_hidden_state_layer_ids {list(top)} (input of layer i) name different layers; "
            "keep one of them.")
    if ids is None:
        if num_layers < 4:
            raise SpecforgeError(f"EAGLE-3 needs a target with at least 4 layers (got {num_layers}); "
                                 "set eagle_config.eagle_aux_hidden_state_layer_ids in the draft config.")
        return [2, num_layers // 2, num_layers - 3]
    out = [int(i) for i in ids]
    if len(out) != 3 or any(not 1 <= i <= num_layers - 1 for i in out):
        raise SpecforgeError(
            f"aux layer ids select hidden_states {out}: need 3 indices in 1..{num_layers - 1} (inputs of layers; "
            f"eagle_config ids 0..{num_layers - 2} are outputs of layers) for a {num_layers}-layer target.")
    return out
