"""The seed's tensor-parallel layers (sharded weights, collectives on a process group from train/dist.py)."""

from .linear import ColumnParallelLinear, RowParallelLinear

__all__ = ["ColumnParallelLinear", "RowParallelLinear"]
