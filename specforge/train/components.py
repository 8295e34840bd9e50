"""Glue between the flags and the model-side modules: draft config, draft, TTT and the per-batch forward."""

from __future__ import annotations

import logging
from typing import Callable

import torch

from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)


def resolve_attention_backend(name: str | None, device: str = "cpu") -> str | None:
    """Check ``--draft-attention-backend`` against the registry. ``auto``/None -> the memory-lean choice
    for the device: ``flex_attention`` on CUDA (the fused CPU kernel behind ``sdpa`` does not exist
    there), else the registry default (None)."""
    from specforge.modeling.draft.attention import available_attention_backends

    if name in (None, "auto"):
        return "flex_attention" if str(device).startswith("cuda") else None
    known = available_attention_backends()
    if name not in known:
        raise SpecforgeError(f"unknown --draft-attention-backend '{name}'; choose one of auto, {', '.join(known)}.")
    return name


def build_draft_config(args, target_config):
    """Draft config from ``--draft-model-config`` (``architectures[0]`` picks the class) or derived from
    the target; ``--draft-vocab-size`` overrides; then checked against the target."""
    from specforge.modeling.auto import AutoDraftModelConfig, check_draft_target_compat, derive_draft_config

    if args.draft_model_config:
        cfg = AutoDraftModelConfig.from_file(args.draft_model_config)
        if args.draft_vocab_size is not None and args.draft_vocab_size != getattr(cfg, "draft_vocab_size", None):
            logger.info("--draft-vocab-size %d overrides draft_vocab_size %s of %s", args.draft_vocab_size,
                        getattr(cfg, "draft_vocab_size", None), args.draft_model_config)
            cfg.draft_vocab_size = args.draft_vocab_size
        if getattr(cfg, "draft_vocab_size", None) is None:
            cfg.draft_vocab_size = min(32000, cfg.vocab_size)
    else:
        cfg = derive_draft_config(target_config, args.draft_vocab_size)
    check_draft_target_compat(cfg, target_config)
    return cfg


def build_draft(draft_config, target_model, cache, device: str) -> torch.nn.Module:
    """A fresh draft (fp32 master weights) with the cache's ``d2t``/``t2d`` and the target's frozen embedding.

    ``target_model`` is the HF causal LM; ``cache`` a :class:`specforge.data.cache.CacheResult`.
    """
    from specforge.modeling.auto import AutoEagle3DraftModel

    draft = AutoEagle3DraftModel.from_config(draft_config)
    if tuple(cache.d2t.shape) != tuple(draft.d2t.shape) or tuple(cache.t2d.shape) != tuple(draft.t2d.shape):
        raise SpecforgeError(
            f"dataset cache {cache.path} has a draft vocab of {cache.d2t.numel()} / target vocab "
            f"{cache.t2d.numel()} but the draft config wants {draft.d2t.numel()} / {draft.t2d.numel()}; "
            "pass the same --draft-vocab-size / --draft-model-config as the cache was built with.")
    with torch.no_grad():
        draft.d2t.copy_(cache.d2t)
        draft.t2d.copy_(cache.t2d)
    draft.load_embedding(target_model.get_input_embeddings().weight)
    return draft.to(device=torch.device(device), dtype=torch.float32)


def build_ttt(draft, ttt_length: int, backend: str | None) -> torch.nn.Module:
    """The TTT unroll module (``specforge.core.eagle3.Eagle3TTT``) over ``draft``."""
    from specforge.core.eagle3 import Eagle3TTT

    return Eagle3TTT(draft, ttt_length=ttt_length, attention_backend=backend)


def make_forward_fn(model: Callable, target, t2d: torch.Tensor) -> Callable:
    """``forward_fn(batch) -> (loss, metrics)`` for the trainer.

    Runs the target under no-grad (``target``: :class:`specforge.modeling.target.HFEagle3TargetModel`),
    builds the teacher restricted to the draft vocab, then ``model`` (the TTT module, possibly DDP-wrapped).
    ``batch``: ``input_ids``, ``attention_mask``, ``loss_mask`` ``[B,L]``. ``metrics``: per-position ``[K]``
    ``acc`` (pooled; positions whose teacher argmax is outside the draft vocab count as misses), ``pos_loss``,
    ``expected_accept`` plus raw ``correct``/``valid`` counts.
    """

    def forward_fn(batch):
        ids, att, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        with torch.no_grad():
            out = target.generate_eagle3_data(ids, att)
            teacher = target.teacher(out, t2d)
        loss, m = model(ids, att, lm, out.aux_hidden, teacher)
        return loss, {"correct": m["step_correct"], "valid": m["step_scored"], "pos_loss": m["step_loss"],
                      "expected_accept": m["step_expected_accept"]}

    return forward_fn
