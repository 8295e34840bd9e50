"""The HF target backend for online training: aux hidden states + teacher under ``no_grad``.

Uses only the public ``output_hidden_states`` of the model's decoder (no monkey patching). The
model itself comes from :func:`specforge.modeling.loading.load_target_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specforge.eagle3.ttt import TeacherTargets, teacher_from_hidden

from .base import aux_layer_ids


@dataclass
class Eagle3TargetOutput:
    """``aux_hidden [B,L,3*Ht]`` (the 3 target states, concatenated) and ``last_hidden [B,L,Ht]``
    (final normed hidden; teacher logits = last_hidden @ lm_head.T)."""

    aux_hidden: torch.Tensor
    last_hidden: torch.Tensor


class HFEagle3TargetModel:
    """Wrap a HF causal LM (``model.model`` decoder + ``lm_head``) as an EAGLE-3 data source."""

    def __init__(self, model, layer_ids: list[int] | None = None, draft_config=None):
        self.model = model
        self.num_layers = model.config.num_hidden_layers
        self.layer_ids = list(layer_ids) if layer_ids is not None else aux_layer_ids(self.num_layers, draft_config)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The target's output embedding ``[V,Ht]``."""
        return self.model.get_output_embeddings().weight

    @property
    def input_embedding_weight(self) -> torch.Tensor:
        """The target's input embedding ``[V,Ht]`` (the draft's frozen ``embed_tokens``)."""
        return self.model.get_input_embeddings().weight

    @torch.no_grad()
    def generate_eagle3_data(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                             ) -> Eagle3TargetOutput:
        """Run the target once: ``input_ids [B,L]``, ``attention_mask [B,L]`` -> :class:`Eagle3TargetOutput`."""
        decoder = getattr(self.model, self.model.base_model_prefix)
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                      use_cache=False)
        hs = out.hidden_states
        aux = torch.cat([hs[i] for i in self.layer_ids], dim=-1)
        return Eagle3TargetOutput(aux_hidden=aux, last_hidden=out.last_hidden_state)

    @torch.no_grad()
    def teacher(self, output: Eagle3TargetOutput, t2d: torch.Tensor, chunk: int = 256,
                positions: torch.Tensor | None = None) -> TeacherTargets:
        """Teacher targets restricted to the draft vocab (``t2d [V]`` bool), in row chunks (no ``[B,L,V]``);
        only at ``positions [B,L]`` bool when given (see :func:`specforge.eagle3.ttt.teacher_positions`)."""
        return teacher_from_hidden(output.last_hidden, self.lm_head_weight, t2d, chunk, positions)

    @torch.no_grad()
    def logits(self, output: Eagle3TargetOutput) -> torch.Tensor:
        """Full teacher logits ``[B,L,V]`` (for tests and small runs)."""
        return output.last_hidden @ self.lm_head_weight.T
