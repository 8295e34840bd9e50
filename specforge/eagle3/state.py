"""What a draft's checkpoint holds, derived from the model itself: the class named by the config is built on
the meta device (no memory, no initialisation cost) and its checkpoint state dict is read off.

Export and validate use this instead of a hand-written copy, so a new draft class or option (an extra norm,
more layers) is described by the code that trains it. ``tests/test_eagle3_state.py`` pins every name and
shape by hand, so the validator stays independent of a bug in the model.
"""

from __future__ import annotations

from typing import Any

import torch

from specforge.eagle3.config import config_dict

TensorSpec = tuple[tuple[int, ...], str]  # (shape, kind) with kind "float" | "int64" | "bool"


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype == torch.int64:
        return "int64"
    return "float" if dtype.is_floating_point else str(dtype).replace("torch.", "")


def build_on_meta(config: Any):
    """The draft class registered for ``config`` (a flat config dict or a config object), on the meta device."""
    from specforge.eagle3.auto import AutoDraftModelConfig, AutoEagle3DraftModel

    cfg = AutoDraftModelConfig.from_dict(config_dict(config)) if isinstance(config, dict) else config
    with torch.device("meta"):
        return AutoEagle3DraftModel.from_config(cfg)


def checkpoint_tensors(config: Any) -> dict[str, TensorSpec]:
    """``name -> (shape, kind)`` of every tensor a checkpoint of this draft holds (specforge's names)."""
    model = build_on_meta(config)
    return {k: (tuple(int(s) for s in v.shape), _kind(v.dtype)) for k, v in model.state_dict_for_save().items()}
