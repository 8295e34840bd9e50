"""Target-side interfaces: the TP target base class and which target states feed the draft."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from specforge.errors import SpecforgeError


class DistributedTargetModel(ABC):
    """Mixin for tensor-parallel target models (the seed's ``MyModelForCausalLM(..., DistributedTargetModel)``).

    A subclass builds its layers from :mod:`specforge.layers.linear` and loads a full (unsharded) HF
    state dict with :meth:`load_weights`, keeping its own shard. It registers in
    ``specforge.modeling.auto.AutoDistributedTargetModel._model_mapping`` and is picked when
    ``--tp-size > 1``.
    """

    @abstractmethod
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load (and shard) the full checkpoint ``state_dict`` (name -> tensor) into this model."""


def _eagle_config(draft_config):
    if draft_config is None:
        return None
    ec = draft_config.get("eagle_config") if isinstance(draft_config, dict) else getattr(draft_config, "eagle_config", None)
    return ec


def aux_layer_ids(num_layers: int, draft_config=None) -> list[int]:
    """Indices into HF ``output_hidden_states`` (``hidden_states[i]`` = input of layer i) of the 3 aux states.

    Default ``[2, L//2, L-3]`` (inputs of layers 2, L//2, L-3 = outputs of layers 1, L//2-1, L-4). A draft
    config's ``eagle_config.eagle_aux_hidden_state_layer_ids`` overrides it; those ids follow SGLang
    ("output of layer i"), so id ``i`` maps to index ``i+1``.
    """
    ec = _eagle_config(draft_config)
    ids = None
    if ec is not None:
        ids = ec.get("eagle_aux_hidden_state_layer_ids") if isinstance(ec, dict) else getattr(
            ec, "eagle_aux_hidden_state_layer_ids", None)
    if ids is None:
        if num_layers < 4:
            raise SpecforgeError(f"EAGLE-3 needs a target with at least 4 layers (got {num_layers}); "
                                 "set eagle_config.eagle_aux_hidden_state_layer_ids in the draft config.")
        return [2, num_layers // 2, num_layers - 3]
    out = [int(i) + 1 for i in ids]
    if len(out) != 3 or any(not 1 <= i <= num_layers - 1 for i in out):
        raise SpecforgeError(
            f"eagle_aux_hidden_state_layer_ids {list(ids)} must be 3 layer ids in 0..{num_layers - 2} "
            f"(outputs of those layers) for a {num_layers}-layer target.")
    return out
