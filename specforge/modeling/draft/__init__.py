"""EAGLE-3 draft models (pure maths) and the TTT attention backends."""

from .attention import available_attention_backends, get_attention_backend, register_attention_backend
from .base import Eagle3DraftModel
from .llama3_eagle import LlamaForCausalLMEagle3

__all__ = [
    "Eagle3DraftModel",
    "LlamaForCausalLMEagle3",
    "available_attention_backends",
    "get_attention_backend",
    "register_attention_backend",
]
