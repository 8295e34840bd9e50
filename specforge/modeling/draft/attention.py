"""Old path of the TTT attention backends; they live in :mod:`specforge.eagle3.attention`."""

from specforge.eagle3.attention import (
    BACKENDS,
    DEFAULT_BACKEND,
    available_attention_backends,
    get_attention_backend,
    register_attention_backend,
)

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "available_attention_backends", "get_attention_backend",
           "register_attention_backend"]
