"""A custom EAGLE-3 draft written outside specforge and registered through the public mappings.

``ScaledLlamaEagle3`` is the Llama EAGLE-3 draft with one extra learned vector: the projected target state
``fc(aux)`` is scaled per channel (``fc_scale [H]``, initialised to ones) before the decoder layer. Nothing
inside ``specforge/`` knows it: registering the config and model classes is enough for ``specforge train``,
``bench``, ``export`` and ``validate`` to build it from any config.json whose ``architectures[0]`` names it.

    python examples/custom_draft.py                     # check: registered, builds, exports its extra tensor
    python examples/custom_draft.py train --draft-model-config my_scaled_draft.json ...   # any specforge command
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import LlamaConfig

from specforge.eagle3.llama import LlamaForCausalLMEagle3
from specforge.modeling.auto import AutoDraftModelConfig, AutoEagle3DraftModel

ARCH = "ScaledLlamaEagle3"


class ScaledEagle3Config(LlamaConfig):
    """The Llama draft config under its own model type (so the registry picks the class by config class)."""

    model_type = "scaled_llama_eagle3"


class ScaledLlamaEagle3(LlamaForCausalLMEagle3):
    """``LlamaForCausalLMEagle3`` with ``fc_scale [H]``: hidden = fc(aux) * fc_scale. Pure maths."""

    config_class = ScaledEagle3Config

    def __init__(self, config, quant_config=None) -> None:
        super().__init__(config, quant_config)
        self.fc_scale = nn.Parameter(torch.ones(config.hidden_size))

    def project_hidden_states(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """``[B,T,3*Ht] -> [B,T,H]``."""
        return super().project_hidden_states(aux_hidden) * self.fc_scale


def register() -> None:
    """Make ``architectures: ["ScaledLlamaEagle3"]`` resolve to this class everywhere (the seed's API)."""
    AutoEagle3DraftModel._model_mapping[ScaledEagle3Config] = [ScaledLlamaEagle3]
    AutoDraftModelConfig._config_mapping[ARCH] = ScaledEagle3Config


register()


def _check() -> None:
    from specforge.eagle3.state import checkpoint_tensors

    cfg = {"architectures": [ARCH], "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "intermediate_size": 128, "vocab_size": 512, "draft_vocab_size": 64, "num_hidden_layers": 1,
           "rms_norm_eps": 1e-6}
    tensors = checkpoint_tensors(cfg)
    assert tensors["fc_scale"] == ((64,), "float"), tensors.get("fc_scale")
    print(f"{ARCH} registered: {len(tensors)} checkpoint tensors, including fc_scale [64]")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        from specforge.cli import main as cli_main

        sys.exit(cli_main(sys.argv[1:]))
    _check()
