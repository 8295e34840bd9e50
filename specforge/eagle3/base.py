"""The abstract EAGLE-3 draft model: what the TTT unroll, the decoder and the exporter rely on.

Shapes: ``B`` batch, ``T``/``L`` tokens, ``H`` draft hidden, ``Ht`` target hidden, ``V`` target vocab,
``Vd`` draft vocab, ``NH``/``KVH`` query/key-value heads, ``D`` head dim. Pure maths: no I/O, no devices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from specforge.errors import SpecforgeError

KVCache = tuple[torch.Tensor, torch.Tensor]  # (keys [B,KVH,S,D] with rotary applied, values [B,KVH,S,D])


class Eagle3DraftModel(nn.Module, ABC):
    """Base class of EAGLE-3 drafts; subclasses register in ``specforge.modeling.auto``.

    A subclass owns ``embed_tokens`` (a frozen copy of the target's input embedding, never exported)
    and the buffers ``d2t`` (int64 ``[Vd]``, target_id = draft_id + d2t[draft_id]) and ``t2d``
    (bool ``[V]``, True where a target token is in the draft vocab).
    """

    config_class: Any = None  # set by subclasses (the HF config class the draft is built from)
    # set by subclasses: the frozen embedding and the vocabulary maps (see the class docstring)
    embed_tokens: nn.Embedding
    d2t: torch.Tensor
    t2d: torch.Tensor
    #: state-dict keys that are not part of a checkpoint (the target's embedding is loaded separately)
    non_checkpoint_keys: tuple[str, ...] = ("embed_tokens.weight",)

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__()
        self.config = config

    # ---- inputs -------------------------------------------------------------------------------
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B,T] -> [B,T,H]`` from the frozen copy of the target's embedding."""
        return self.embed_tokens(input_ids)

    @torch.no_grad()
    def load_embedding(self, weight: torch.Tensor) -> None:
        """Copy the target's input embedding ``weight [V,H]`` into the draft and freeze it."""
        emb = self.embed_tokens.weight
        if tuple(weight.shape) != tuple(emb.shape):
            raise SpecforgeError(
                f"target embedding has shape {tuple(weight.shape)} but the draft expects {tuple(emb.shape)}; "
                "check that vocab_size and hidden_size of the draft config match the target."
            )
        emb.copy_(weight.to(dtype=emb.dtype, device=emb.device))
        emb.requires_grad_(False)

    @abstractmethod
    def project_hidden_states(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """Project the concatenated target states ``[B,T,3*Ht] -> [B,T,H]`` (``fc``)."""

    # ---- outputs ------------------------------------------------------------------------------
    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft-vocab logits ``[...,H] -> [...,Vd]`` (final norm + ``lm_head``) from a pre-norm output."""

    def logits_parts(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Optionally split ``compute_logits`` as ``(x [...,H'], weight [Vd,H'])`` with logits = x @ weight.T.

        The TTT loss uses it to fuse the head with the soft cross-entropy (no ``[N,Vd]`` tensors kept
        for backward). ``None`` (the default) makes the loss call ``compute_logits`` instead.
        """
        return None

    # ---- the decoder layer ----------------------------------------------------------------------
    @abstractmethod
    def decode_step(
        self,
        input_embeds: torch.Tensor,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        past_kv: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """One pass of the decoder layer for decoding.

        Args: ``input_embeds [B,T,H]``, ``hidden [B,T,H]`` (projected target state or a previous
        step's pre-norm output), ``position_ids [B,T]``, ``past_kv`` keys/values ``[B,KVH,S,D]`` (keys
        carry their rotary embedding) or None, ``attn_mask`` bool ``[B,T,S+T]`` (True = may attend;
        None = causal over past + new).
        Returns ``(out [B,T,H] pre-norm, (k_new [B,KVH,T,D], v_new [B,KVH,T,D]))`` - only the new
        positions' keys/values; the caller owns concatenation and roll-back.
        """

    @abstractmethod
    def ttt_step(
        self,
        input_embeds: torch.Tensor,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        cache: list[KVCache],
        attention_mask: torch.Tensor | None,
        backend,
    ) -> torch.Tensor:
        """One training-time-test step over the whole sequence.

        Args: ``input_embeds [B,L,H]``, ``hidden [B,L,H]``, ``position_ids [B,L]``, ``cache`` the
        keys/values ``[B,KVH,L,D]`` of the previous steps (this step's are appended), ``attention_mask``
        ``[B,L]`` (1 = real token) or None, ``backend`` an attention backend from
        :mod:`specforge.eagle3.attention`. Returns the pre-norm output ``[B,L,H]``.
        """

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        """The checkpoint tensors (``midlayer.*``, ``fc``, ``norm``, ``lm_head``, ``d2t``, ``t2d``), contiguous.

        The frozen embedding is dropped: it is the target's and exporting a copy would let vLLM use it.
        """
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k not in self.non_checkpoint_keys}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load a checkpoint state dict strictly (except the embedding); mismatches raise one clear line."""
        own = self.state_dict()
        expected = set(own) - set(self.non_checkpoint_keys)
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {missing[:5]}")
            if unexpected:
                parts.append(f"unexpected {unexpected[:5]}")
            raise SpecforgeError(
                f"{source} does not match {type(self).__name__}: {'; '.join(parts)}; "
                "was it saved from a different draft architecture or config?"
            )
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise SpecforgeError(
                    f"{source}: tensor {k} has shape {tuple(v.shape)} but the config gives {tuple(own[k].shape)}; "
                    "use the config.json saved with these weights."
                )
        self.load_state_dict(state, strict=False)
