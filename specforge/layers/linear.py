"""``ColumnParallelLinear`` / ``RowParallelLinear``: the seed's TP building blocks.

For now they are plain ``nn.Linear`` layers that carry tensor-parallel metadata (how to shard the
weight, whether the output is gathered / reduced). A TP plan applied from outside (DTensor, one
process-group owner) reads ``tp_style``; in a single process they compute exactly ``nn.Linear``.
"""

from __future__ import annotations

from torch import nn


class ColumnParallelLinear(nn.Linear):
    """Output features sharded across ranks (weight split on dim 0). ``x [...,in] -> [...,out]``."""

    tp_style = "colwise"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gather_output: bool = False,
                 **kwargs):
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.gather_output = gather_output


class RowParallelLinear(nn.Linear):
    """Input features sharded across ranks (weight split on dim 1), outputs all-reduced. ``[...,in] -> [...,out]``."""

    tp_style = "rowwise"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_is_parallel: bool = True,
                 **kwargs):
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.input_is_parallel = input_is_parallel
