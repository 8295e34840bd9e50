"""Layers with tensor-parallel metadata (real sharding is applied from outside; see linear.py)."""

from .linear import ColumnParallelLinear, RowParallelLinear

__all__ = ["ColumnParallelLinear", "RowParallelLinear"]
