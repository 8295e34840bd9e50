"""Glue between the flags and the model-side modules: draft config, draft, TTT and the per-batch forward."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from specforge.eagle3.base import Eagle3DraftModel
from specforge.errors import SpecforgeError
from specforge.train.config import DataOptions

logger = logging.getLogger(__name__)


def resolve_attention_backend(name: str | None, device: str = "cpu") -> str | None:
    """Check ``--draft-attention-backend`` against the registry. ``auto``/None -> the memory-lean choice
    for the device: ``flex_attention`` on CUDA (the fused CPU kernel behind ``sdpa`` does not exist
    there), else the registry default (None)."""
    from specforge.eagle3.attention import available_attention_backends

    if name in (None, "auto"):
        return "flex_attention" if str(device).startswith("cuda") else None
    known = available_attention_backends()
    if name not in known:
        raise SpecforgeError(f"unknown --draft-attention-backend '{name}'; choose one of auto, {', '.join(known)}.")
    return name


def resolve_train_dtype(name: str | None, device: str):
    """``--dtype`` of training -> torch dtype. ``auto`` = bf16 where the hardware runs it natively (CUDA with
    bf16 support, CPUs with avx512_bf16/amx_bf16), else fp32. The draft keeps fp32 master weights and
    runs under autocast; the target is loaded in this dtype."""
    from specforge.modeling.loading import resolve_dtype

    if name not in (None, "auto"):
        return resolve_dtype(name, device)
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from specforge.inference import precision

    return torch.bfloat16 if str(device) == "cpu" and precision.cpu_has_fast_bf16() else torch.float32


def build_draft_config(draft_model_config: str | None, draft_vocab_size: int | None, target_config):
    """Draft config from ``draft_model_config`` (a config.json; ``architectures[0]`` picks the class) or
    derived from the target; ``draft_vocab_size`` overrides; then checked against the target."""
    from specforge.eagle3.auto import (
        AutoDraftModelConfig,
        check_draft_target_compat,
        derive_draft_config,
    )
    from specforge.eagle3.config import default_draft_vocab_size

    if draft_model_config:
        cfg = AutoDraftModelConfig.from_file(draft_model_config)
        if draft_vocab_size is not None and draft_vocab_size != getattr(cfg, "draft_vocab_size", None):
            logger.info("--draft-vocab-size %d overrides draft_vocab_size %s of %s", draft_vocab_size,
                        getattr(cfg, "draft_vocab_size", None), draft_model_config)
            cfg.draft_vocab_size = draft_vocab_size
        if getattr(cfg, "draft_vocab_size", None) is None:
            cfg.draft_vocab_size = default_draft_vocab_size(cfg.vocab_size)
    else:
        cfg = derive_draft_config(target_config, draft_vocab_size)
    check_draft_target_compat(cfg, target_config)
    return cfg


def build_cache(data: DataOptions, target_path: str, draft_config, tokenizer):
    """The dataset cache of the training/eval conversations (built, or found by its hash)."""
    from specforge.data.cache import build_eagle3_dataset_cache

    return build_eagle3_dataset_cache(
        target_model_path=target_path, train_data_path=data.train_data_path, eval_data_path=data.eval_data_path,
        cache_dir=data.cache_dir, chat_template=data.chat_template, max_length=data.max_length,
        draft_vocab_size=int(draft_config.draft_vocab_size), num_proc=data.num_proc, tokenizer=tokenizer)


def open_hidden_states(path: str, dequant_dtype: torch.dtype = torch.bfloat16):
    """A hidden-state store (``specforge prepare-hidden-states``) in the shape of a dataset cache result:
    ``train``/``eval`` row sequences, ``d2t``, ``t2d``, ``path``. A float8 store's hidden states are dequantised
    to ``dequant_dtype``; other stores give theirs in the storage dtype."""
    from types import SimpleNamespace

    from specforge.data.hidden_states import HiddenStateRows, read_meta, read_vocab

    meta = read_meta(path)
    d2t, t2d = read_vocab(path)
    ev = HiddenStateRows(path, "eval", dequant_dtype) if "eval" in meta["splits"] else None
    return SimpleNamespace(train=HiddenStateRows(path, "train", dequant_dtype), eval=ev, d2t=d2t, t2d=t2d, path=path)


def build_draft(draft_config, target_model, cache, device: str, freeze_lm_head: bool = False) -> Eagle3DraftModel:
    """A fresh draft (fp32 master weights) with the cache's ``d2t``/``t2d`` and the target's frozen embedding.

    ``target_model`` is the HF causal LM; ``cache`` a :class:`specforge.data.cache.CacheResult`. With
    ``freeze_lm_head`` see :func:`init_head_from_target`.
    """
    from specforge.eagle3.auto import AutoEagle3DraftModel

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
    if freeze_lm_head:
        init_head_from_target(draft, target_model)
    return draft.to(device=torch.device(device), dtype=torch.float32)


@torch.no_grad()
def init_head_from_target(draft, target_model) -> None:
    """``--freeze-lm-head``: the draft's ``lm_head`` becomes the target's output rows of the draft vocab
    (``lm_head[j] = W_target[j + d2t[j]]``), frozen (no weight gradient: about a third less head work), and
    its final ``norm`` starts from the target's final norm (still trained), so that at initialisation the
    draft's head is the target's head restricted to the draft vocab."""
    head = getattr(draft, "lm_head", None)
    W = target_model.get_output_embeddings().weight  # [V, Ht]
    if head is None or head.weight.shape[1] != W.shape[1]:
        raise SpecforgeError(
            f"--freeze-lm-head needs a draft lm_head of width {W.shape[1]} (the target's hidden size); this draft "
            f"has {None if head is None else head.weight.shape[1]}: train without --freeze-lm-head.")
    ids = torch.arange(draft.d2t.numel()) + draft.d2t.cpu()
    head.weight.copy_(W[ids.to(W.device)].to(head.weight.dtype))
    head.weight.requires_grad_(False)
    decoder = getattr(target_model, getattr(target_model, "base_model_prefix", "model"), None)
    tnorm = getattr(decoder, "norm", None)
    norm = getattr(draft, "norm", None)
    if tnorm is not None and norm is not None and tnorm.weight.shape == norm.weight.shape:
        norm.weight.copy_(tnorm.weight.to(norm.weight.dtype))


def check_init_weights(init_dir, draft_config) -> None:
    """``--init-from``: its tensors must be exactly what this draft config's checkpoint holds (names and shapes,
    read from the safetensors header: nothing loaded) - checked before the dataset cache and the target."""
    from safetensors import safe_open

    from specforge.eagle3.state import checkpoint_tensors

    want = {k: shape for k, (shape, _) in checkpoint_tensors(draft_config).items()}
    f = Path(init_dir) / "model.safetensors"
    try:
        with safe_open(str(f), framework="pt") as h:
            have = {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}  # noqa: SIM118
    except Exception as e:  # noqa: BLE001 - not a safetensors file, truncated header, ...
        raise SpecforgeError(f"--init-from {init_dir}: {f} is not a readable safetensors file ({e}).") from None
    problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
    problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    problems += [f"{k} has shape {have[k]}, the draft config gives {want[k]}" for k in sorted(set(want) & set(have))
                 if have[k] != want[k]]
    if problems:
        raise SpecforgeError(f"--init-from {init_dir}: its weights do not fit the draft config ({'; '.join(problems[:3])}"
                             f"{'; ...' if len(problems) > 3 else ''}); drop --draft-model-config/--draft-vocab-size "
                             "to use the config saved with them.")


@torch.no_grad()
def init_draft_from(draft, init_dir, cache) -> None:
    """``--init-from``: load a trained draft's weights into the fresh ``draft`` (strict: same config), keeping
    their vocab mapping - the lm_head rows belong to it - even where this run's data would pick another; the
    teacher is then restricted to that vocab. The frozen embedding stays the target's; a frozen lm_head stays
    frozen (at the loaded rows)."""
    from specforge.train.checkpoint import load_draft_weights

    load_draft_weights(draft, init_dir)
    if cache is not None and not torch.equal(draft.t2d.cpu(), cache.t2d.cpu()):
        kept = int((draft.t2d.cpu() & cache.t2d.cpu()).sum())
        logger.info("--init-from %s: keeping its draft vocab (%d of its %d tokens are in this data's vocab)",
                    init_dir, kept, int(draft.t2d.sum()))
    logger.info("draft initialised from %s (fresh optimizer and schedule)", init_dir)


def build_ttt(draft, ttt_length: int, backend: str | None) -> torch.nn.Module:
    """The TTT unroll module (``specforge.eagle3.ttt.Eagle3TTT``) over ``draft``."""
    from specforge.eagle3.ttt import Eagle3TTT

    return Eagle3TTT(draft, ttt_length=ttt_length, attention_backend=backend)


def make_forward_fn(model: Callable, target, t2d: torch.Tensor) -> Callable:
    """``forward_fn(batch) -> (loss, metrics)`` for the trainer.

    Runs the target under no-grad (``target``: :class:`specforge.modeling.target.HFEagle3TargetModel`),
    builds the teacher restricted to the draft vocab, then ``model`` (the TTT module, possibly DDP-wrapped).
    ``batch``: ``input_ids``, ``attention_mask``, ``loss_mask`` ``[B,L]``. ``metrics``: per-position ``[K]``
    ``acc`` (pooled; positions whose teacher argmax is outside the draft vocab count as misses), ``pos_loss``,
    ``expected_accept`` plus raw ``correct``/``valid`` counts.
    """

    from specforge.eagle3.ttt import teacher_positions

    def forward_fn(batch):
        ids, att, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        with torch.no_grad():
            out = target.generate_eagle3_data(ids, att)
            # the full-vocab teacher only where a TTT step reads it (after a supervised token)
            teacher = target.teacher(out, t2d, positions=teacher_positions(lm, att))
        return _loss_and_metrics(model(ids, att, lm, out.aux_hidden, teacher))

    return forward_fn


def make_offline_forward_fn(model: Callable, target, t2d: torch.Tensor) -> Callable:
    """Like :func:`make_forward_fn` for batches of stored hidden states (``aux_hidden``, ``last_hidden``):
    no target forward; the teacher goes through the target's frozen lm_head at the positions the TTT reads."""
    from specforge.eagle3.ttt import teacher_from_hidden, teacher_positions

    def forward_fn(batch):
        ids, att, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        W = target.lm_head_weight
        with torch.no_grad():
            teacher = teacher_from_hidden(batch["last_hidden"].to(W.dtype), W, t2d,
                                          positions=teacher_positions(lm, att))
        return _loss_and_metrics(model(ids, att, lm, batch["aux_hidden"], teacher))

    return forward_fn


def _loss_and_metrics(result) -> tuple:
    """The TTT module's ``(loss, metrics)`` -> the trainer's: accuracy pooled over every scored position
    (one whose teacher argmax is outside the draft vocab is a certain rejection at decode time, so it
    counts as a miss), per-position loss and expected acceptance. Online and offline share it."""
    loss, m = result
    return loss, {"correct": m["step_correct"], "valid": m["step_scored"], "pos_loss": m["step_loss"],
                  "expected_accept": m["step_expected_accept"]}
