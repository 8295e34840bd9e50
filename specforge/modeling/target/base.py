"""Target-side interfaces: the TP target base class (``aux_layer_ids`` is re-exported from
:mod:`specforge.eagle3.config`, which decides which target states feed the draft)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from specforge.eagle3.config import aux_layer_ids
from specforge.errors import SpecforgeError

__all__ = ["DistributedTargetModel", "aux_layer_ids", "check_tp_layout"]


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
        for name in state_dict.keys():  # noqa: SIM118  (lazy safetensors handles have keys() only)
            if name not in params:
                if name.endswith((".inv_freq", "rotary_emb.inv_freq")):
                    continue
                raise SpecforgeError(f"checkpoint tensor {name} has no place in {type(self).__name__}; "
                                     "override load_weights to map its names.")
            mod_name = name.rpartition(".")[0]
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
