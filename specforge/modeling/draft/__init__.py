"""Old home of the EAGLE-3 drafts (the seed's import path); they live in :mod:`specforge.eagle3`."""

from specforge.eagle3.attention import (
    available_attention_backends,
    get_attention_backend,
    register_attention_backend,
)
from specforge.eagle3.base import Eagle3DraftModel
from specforge.eagle3.llama import LlamaForCausalLMEagle3

__all__ = [
    "Eagle3DraftModel",
    "LlamaForCausalLMEagle3",
    "available_attention_backends",
    "get_attention_backend",
    "register_attention_backend",
]
