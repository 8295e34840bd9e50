"""``ColumnParallelLinear`` / ``RowParallelLinear``: the seed's tensor-parallel building blocks.

Megatron-style sharding on torch.distributed's own (autograd-aware) collectives:

* ``ColumnParallelLinear(in, out)`` keeps rows ``[r*out/tp, (r+1)*out/tp)`` of the full ``[out, in]``
  weight (and bias) on rank ``r``; ``x [..., in] -> y [..., out/tp]`` (or ``[..., out]`` with
  ``gather_output=True``: an all-gather along the last dim).
* ``RowParallelLinear(in, out)`` keeps columns ``[r*in/tp, (r+1)*in/tp)`` of the weight and the whole
  bias; ``x [..., in/tp] -> y [..., out]``: the partial products are summed over the group
  (all-reduce), then the bias is added once.

``tp_group`` is a process group made by :mod:`specforge.train.dist` (the only module that creates
them); ``None`` means one process, where both are exactly ``nn.Linear``. ``load_full_weight`` takes a
*full* checkpoint tensor, or a lazy ``safetensors`` slice (``safe_open(...).get_slice(name)``), and
copies in only this rank's shard, so a rank never reads the other ranks' part of the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_layout(tp_group) -> tuple[int, int]:
    """``(rank, size)`` of this process inside ``tp_group`` (``(0, 1)`` for ``None``)."""
    if tp_group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(tp_group), dist.get_world_size(tp_group)


def full_shape(t) -> tuple[int, ...]:
    """Shape of a tensor or of a lazy safetensors slice."""
    return tuple(t.get_shape()) if hasattr(t, "get_shape") else tuple(t.shape)


def read_shard(t, dim: int, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous 1/``size`` part of ``t`` along ``dim`` (a tensor or a safetensors slice)."""
    shape = full_shape(t)
    if shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {shape[dim]} does not split over {size} ranks")
    n = shape[dim] // size
    index = [slice(None)] * len(shape)
    index[dim] = slice(rank * n, (rank + 1) * n)
    return t[tuple(index)]


def _copy_into(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"{name}: checkpoint shard {tuple(value.shape)} does not fit parameter {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value.to(dtype=param.dtype, device=param.device))


class ColumnParallelLinear(nn.Linear):
    """Output features sharded across ``tp_group`` (weight split on dim 0). ``x [...,in] -> [...,out/tp]``."""

    tp_style = "colwise"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gather_output: bool = False,
                 tp_group=None, **kwargs):
        rank, size = group_layout(tp_group)
        if out_features % size:
            raise ValueError(f"ColumnParallelLinear: {out_features} output features do not split over {size} ranks")
        super().__init__(in_features, out_features // size, bias=bias, **kwargs)
        self.full_out_features, self.gather_output = out_features, gather_output
        self.tp_group, self.tp_rank, self.tp_size = tp_group, rank, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.gather_output and self.tp_size > 1:
            import torch.distributed.nn.functional as dnn

            y = torch.cat(dnn.all_gather(y.contiguous(), group=self.tp_group), dim=-1)
        return y

    def load_full_weight(self, name: str, full) -> None:
        """Copy this rank's rows of the full ``weight [out,in]`` or ``bias [out]`` (``name`` ends in either)."""
        param = self.bias if name.endswith("bias") else self.weight
        _copy_into(param, read_shard(full, 0, self.tp_rank, self.tp_size), name)


class RowParallelLinear(nn.Linear):
    """Input features sharded across ``tp_group`` (weight split on dim 1), outputs all-reduced.
    ``x [...,in/tp] -> [...,out]``."""

    tp_style = "rowwise"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_is_parallel: bool = True,
                 tp_group=None, **kwargs):
        rank, size = group_layout(tp_group)
        if in_features % size:
            raise ValueError(f"RowParallelLinear: {in_features} input features do not split over {size} ranks")
        super().__init__(in_features // size, out_features, bias=bias, **kwargs)
        self.full_in_features, self.input_is_parallel = in_features, input_is_parallel
        self.tp_group, self.tp_rank, self.tp_size = tp_group, rank, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel and self.tp_size > 1:  # a replicated input: take this rank's columns
            x = read_shard(x, x.dim() - 1, self.tp_rank, self.tp_size)
        y = F.linear(x, self.weight)
        if self.tp_size > 1:
            import torch.distributed.nn.functional as dnn

            y = dnn.all_reduce(y, group=self.tp_group)
        return y + self.bias if self.bias is not None else y

    def load_full_weight(self, name: str, full) -> None:
        """Copy this rank's columns of the full ``weight [out,in]``; the ``bias [out]`` is replicated."""
        if name.endswith("bias"):
            _copy_into(self.bias, full[:], name)
        else:
            _copy_into(self.weight, read_shard(full, 1, self.tp_rank, self.tp_size), name)
