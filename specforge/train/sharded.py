"""Checkpoint state of a draft sharded by FSDP2 (``--fsdp``): full tensors out, shards back in.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns each parameter, its gradient and its AdamW
moments into DTensors sharded on dim 0. A checkpoint stays the single-process format (plain
``model.safetensors`` + ``optimizer.pt`` keyed by parameter index), so it can be exported, evaluated
or resumed like any other:

* saving: :func:`full_state` gathers every DTensor (``full_tensor()``, a collective that every rank
  runs in the same order), then rank 0 writes the files atomically;
* resuming: :func:`load_draft_sharded` / :func:`shard_optimizer_state` cut the full tensors back
  into this rank's shards with ``distribute_tensor`` on the parameter's own mesh and placements.
"""

from __future__ import annotations

from typing import Any

import torch

from specforge.errors import SpecforgeError


def _dtensor_cls():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(module: torch.nn.Module) -> bool:
    """True when any parameter of ``module`` is a DTensor (FSDP2-sharded)."""
    DTensor = _dtensor_cls()
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_state(tree: Any) -> Any:
    """``tree`` (nested dicts / lists of tensors) with every DTensor gathered into a full CPU tensor.

    Collective: every rank must call it on structurally equal trees.
    """
    DTensor = _dtensor_cls()
    if isinstance(tree, DTensor):
        return tree.full_tensor().detach().cpu()
    if isinstance(tree, dict):
        return {k: full_state(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(full_state(v) for v in tree)
    return tree


def full_draft_state(draft: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The draft's checkpoint tensors (its ``state_dict_for_save`` names) as full CPU tensors."""
    save = getattr(draft, "state_dict_for_save", None)
    own = save() if save is not None else {
        k: v for k, v in draft.state_dict().items() if "embed_tokens" not in k}
    return {k: v.contiguous() for k, v in full_state(own).items()}


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` placed like ``ref``: a DTensor on ``ref``'s mesh / placements, or a plain tensor."""
    DTensor = _dtensor_cls()
    if isinstance(ref, DTensor):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(device=ref.device, dtype=ref.dtype), ref.device_mesh, ref.placements)
    return full.to(device=ref.device, dtype=ref.dtype)


def load_draft_sharded(draft: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy full checkpoint ``tensors`` into the (sharded) draft; the embedding is not in the file."""
    own = dict(draft.named_parameters()) | dict(draft.named_buffers())
    save = getattr(draft, "state_dict_for_save", None)
    expected = set(save() if save is not None else
                   {k for k in own if "embed_tokens" not in k})
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise SpecforgeError(f"{source} does not match the draft (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); was it written for another config?")
    with torch.no_grad():
        for name, full in tensors.items():
            ref = own[name]
            if tuple(full.shape) != tuple(ref.shape):
                raise SpecforgeError(f"{source}: {name} has shape {tuple(full.shape)}, the draft {tuple(ref.shape)}.")
            ref.copy_(_like(full, ref))


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full ``optimizer.state_dict()`` (param-index keyed) with each per-parameter tensor of the
    parameter's shape turned into a DTensor placed like that parameter."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    out = {"param_groups": state["param_groups"], "state": {}}
    for idx, st in state["state"].items():
        p = params[int(idx)]
        out["state"][idx] = {k: _like(v, p) if torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape) else v
                             for k, v in st.items()}
    return out
