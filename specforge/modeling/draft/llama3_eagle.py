"""Old path of ``LlamaForCausalLMEagle3``; it lives in :mod:`specforge.eagle3.llama`."""

from specforge.eagle3.llama import LlamaForCausalLMEagle3

__all__ = ["LlamaForCausalLMEagle3"]
