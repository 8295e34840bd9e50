"""Recipe: write and register your own tensor-parallel target (the seed's customisation guide).

A TP target is a causal LM that (1) subclasses ``DistributedTargetModel``, (2) builds its big matrices
from ``ColumnParallelLinear`` / ``RowParallelLinear`` with the ``tp_group`` it is given, (3) names its
parameters like the HF checkpoint (or overrides ``load_weights`` to map names), (4) exposes ``config``,
``base_model_prefix`` (its decoder, which returns ``last_hidden_state`` and ``hidden_states``) and the
input/output embeddings, and (5) is registered under its HF config class. ``--tp-size > 1`` then picks
it automatically.

This example targets Mistral (a Llama-shaped model whose config class specforge does not register) by
reusing the Llama TP building blocks; an exotic architecture writes its own layers the same way. Run::

    python examples/custom_tp_target.py            # registers it and checks it against HF Mistral
    # in your own launcher: `import custom_tp_target` before calling specforge's training entry point
    torchrun --nproc_per_node 2 examples/custom_tp_target.py train --target-model-path MISTRAL_DIR --tp-size 2 ...
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import MistralConfig

from specforge.layers.linear import ColumnParallelLinear, RowParallelLinear  # noqa: F401  (the seed's API)
from specforge.modeling.auto import AutoDistributedTargetModel
from specforge.modeling.target.base import DistributedTargetModel
from specforge.modeling.target.llama_tp import FamilySpec, TPDecoder


class MistralTPForCausalLM(nn.Module, DistributedTargetModel):
    """Tensor-parallel Mistral: Llama layout (q/k/v/gate/up column-parallel, o/down row-parallel)."""

    base_model_prefix = "model"

    def __init__(self, config: MistralConfig, tp_group=None):
        super().__init__()
        if getattr(config, "sliding_window", None):
            # full attention only; a real port would add the window to the decoder's mask
            config.sliding_window = None
        self.config = config
        self.model = TPDecoder(config, FamilySpec(), tp_group)  # layers built from the parallel linears
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B,L] -> logits [B,L,V]`` (training only calls the decoder + lm_head)."""
        return self.lm_head(self.model(input_ids, attention_mask).last_hidden_state)

    def load_weights(self, state_dict) -> None:
        """HF Mistral names already match ours (rename here if yours do not); each parallel layer keeps its shard."""
        self.load_hf_weights(state_dict)


def register() -> None:
    """The seed's one-line registration (``AutoDistributedTargetModel._model_mapping``)."""
    AutoDistributedTargetModel._model_mapping[MistralConfig] = [MistralTPForCausalLM]


register()


def _check() -> None:
    """Single-process check against HF Mistral on a tiny random model (no ``tp_group`` = plain linears)."""
    import tempfile

    from transformers import MistralForCausalLM

    from specforge.modeling.loading import load_tp_target

    cfg = MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=None)
    torch.manual_seed(0)
    ref = MistralForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        tp = load_tp_target(d, None, dtype=torch.float32)
    assert type(tp) is MistralTPForCausalLM
    ids = torch.randint(0, 256, (1, 12))
    torch.testing.assert_close(tp(ids), ref(ids).logits)
    print("MistralTPForCausalLM registered; logits equal HF Mistral")


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        from specforge.cli import main as cli_main

        sys.exit(cli_main(sys.argv[1:]))
    _check()
