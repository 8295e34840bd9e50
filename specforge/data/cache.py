"""The EAGLE-3 dataset cache: tokenised conversations + loss masks + the draft-vocab mapping.

Layout (one directory per distinct set of inputs)::

    CACHE_DIR/eagle3-<hash>/
        train/                      datasets.Dataset.save_to_disk (columns input_ids, loss_mask)
        eval/                       same, when an eval file was given
        vocab_mapping.safetensors   d2t int64 [Vd], t2d bool [V]
        meta.json                   the inputs that were hashed, row/token statistics

``<hash>`` covers everything that changes the content: the data files (size and sha256 of their bytes),
the tokenizer (its serialised vocabulary/merges, special tokens and chat template), the chat template
(name and fields), the max length, the draft vocab size and :data:`FORMAT_VERSION`. The directory is
built under a temporary name and renamed into place, so a failed or interrupted build leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specforge.data.preprocess import (
    NO_SPAN_WARNING,
    load_conversations,
    tokenize_conversations,
)
from specforge.data.template import ChatTemplate, get_renderer, template_identity
from specforge.data.vocab import build_vocab_mapping, count_loss_tokens
from specforge.eagle3.config import DEFAULT_DRAFT_VOCAB_CAP, default_draft_vocab_size
from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: empty assistant replies are no longer supervised (their end-of-turn token was)
DEFAULT_DRAFT_VOCAB_SIZE = DEFAULT_DRAFT_VOCAB_CAP  # kept for callers of the old name
VOCAB_FILE = "vocab_mapping.safetensors"
META_FILE = "meta.json"


@dataclass
class CacheResult:
    """What :func:`build_eagle3_dataset_cache` returns.

    ``train`` / ``eval``: ``datasets.Dataset`` with ``input_ids`` and ``loss_mask`` (int lists, same
    length per row, ``<= max_length``); ``eval`` is None without an eval file. ``d2t``: int64 ``[Vd]``;
    ``t2d``: bool ``[V]``; ``path``: the cache directory; ``hit``: whether it was reused.
    """

    train: Any
    eval: Any
    d2t: torch.Tensor
    t2d: torch.Tensor
    path: Path
    hit: bool = False
    meta: dict = field(default_factory=dict)


def _read_draft_config(draft_model_config) -> dict:
    if draft_model_config is None:
        return {}
    if isinstance(draft_model_config, dict):
        return draft_model_config
    if hasattr(draft_model_config, "to_dict"):
        return draft_model_config.to_dict()
    path = Path(draft_model_config)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecforgeError(f"{path}: draft model config not found; check --draft-model-config.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecforgeError(f"{path}: draft model config is not valid JSON ({e}); fix the file.") from None
    if not isinstance(cfg, dict):
        raise SpecforgeError(f"{path}: draft model config must be a JSON object.")
    return cfg


def resolve_draft_vocab_size(target_vocab_size: int, draft_model_config=None, override: int | None = None) -> int:
    """The draft vocab size: ``override``, else the draft config's ``draft_vocab_size``, else
    :func:`specforge.eagle3.config.default_draft_vocab_size`. A draft config made for another target (``vocab_size != V``) or a draft vocab
    larger than the target's is rejected."""
    cfg = _read_draft_config(draft_model_config)
    where = f"draft config {draft_model_config}" if isinstance(draft_model_config, (str, os.PathLike)) else "draft config"
    if "vocab_size" in cfg and cfg["vocab_size"] != target_vocab_size:
        raise SpecforgeError(
            f"{where} has vocab_size {cfg['vocab_size']} but the target model's vocab is {target_vocab_size}; "
            "use a draft config made for this target (or omit --draft-model-config)."
        )
    size = override if override is not None else cfg.get("draft_vocab_size")
    if size is None:
        return default_draft_vocab_size(target_vocab_size)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise SpecforgeError(f"draft vocab size must be a positive integer, got {size!r}.")
    if size > target_vocab_size:
        src = "--draft-vocab-size" if override is not None else where
        raise SpecforgeError(
            f"{src} asks for a draft vocab of {size} tokens but the target vocab has only {target_vocab_size}; "
            f"use at most {target_vocab_size}."
        )
    return size


def file_identity(path: str | os.PathLike) -> dict:
    """Size and sha256 of the file's bytes: changed content gets a new cache key, while a file that is
    merely rewritten with the same rows (or moved) stays a cache hit. Hashing runs at disk speed."""
    p = Path(path).resolve()
    if not p.is_file():
        raise SpecforgeError(f"{path}: file not found; check the path you passed.")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return {"size": p.stat().st_size, "sha256": h.hexdigest()}


def tokenizer_identity(tokenizer) -> str:
    """sha256 of everything about a tokenizer that changes ids: vocab/merges, specials, chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()


def cache_key(ingredients: dict) -> str:
    """Short sha256 of the JSON-serialised inputs."""
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()[:16]


def _tokenize_batch(batch, tokenizer, renderer, max_length):
    return tokenize_conversations(batch["conversations"], tokenizer, renderer, max_length)


def _tokenize_file(path, tokenizer, renderer, max_length: int, num_proc: int, split: str):
    """Validate and tokenise one JSONL file into a Dataset (+ stats)."""
    import datasets

    convs = load_conversations(path)
    ds = datasets.Dataset.from_dict({"conversations": convs})
    features = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "loss_mask": datasets.List(datasets.Value("int8")),
        "num_spans": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
    })
    num_proc = max(1, min(num_proc, len(convs)))
    if num_proc > 1:
        # Worker processes each tokenise in batches; Rust-level threads on top would only oversubscribe.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ds = ds.map(
        _tokenize_batch, batched=True, batch_size=256, remove_columns=["conversations"], features=features,
        fn_kwargs={"tokenizer": tokenizer, "renderer": renderer, "max_length": max_length},
        num_proc=num_proc if num_proc > 1 else None, new_fingerprint=f"specforge-{split}-{os.getpid()}",
        desc=f"Tokenising {split}",
    )
    import pyarrow.compute as pc

    table = ds.with_format("arrow")[:]
    no_span = int((table.column("num_spans").to_numpy() == 0).sum())
    stats = {
        "rows": len(ds),
        "truncated_rows": int(table.column("truncated").to_numpy(zero_copy_only=False).sum()),
        "rows_without_assistant_span": no_span,
        "loss_tokens": int(pc.sum(pc.list_flatten(table.column("loss_mask"))).as_py() or 0),
    }
    if no_span:
        # One line with a count, not one per row: a data set with broken rows must stay readable.
        logger.warning("WARNING: %s (%d of %d %s rows); their loss mask is all zero.", NO_SPAN_WARNING,
                       no_span, len(ds), split)
    return ds.remove_columns(["num_spans", "truncated"]), stats


def check_supervised(meta: dict, max_length: int, allow: bool = False) -> None:
    """Refuse a cache whose train or eval split has no token with ``loss_mask == 1`` (training on it
    would run at loss 0 and save an untrained draft); with ``allow`` only warn."""
    for split in ("train", "eval"):
        st = meta.get(split) or {}
        n = st.get("loss_tokens", meta.get("loss_tokens") if split == "train" else None)
        if n is None or n > 0:
            continue
        msg = (f"the {split} split has no supervised tokens (loss_mask is 0 in all {st.get('rows', '?')} rows: "
               f"{st.get('rows_without_assistant_span', '?')} without an assistant reply, "
               f"{st.get('truncated_rows', '?')} cut by --max-length {max_length}); check that the assistant "
               "turns have text and fit in --max-length")
        if not allow:
            raise SpecforgeError(msg + " (`build-cache --allow-no-supervised-tokens` builds it anyway for "
                                 "inspection; train never uses it).")
        logger.warning("WARNING: %s; a draft cannot be trained on it.", msg)


def load_cache(path: str | os.PathLike) -> CacheResult:
    """Open an existing cache directory."""
    import datasets
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    vocab = load_file(str(path / VOCAB_FILE))
    train = datasets.load_from_disk(str(path / "train"))
    ev = datasets.load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return CacheResult(train, ev, vocab["d2t"], vocab["t2d"], path, hit=True, meta=meta)


def build_eagle3_dataset_cache(
    target_model_path: str,
    train_data_path: str | os.PathLike,
    eval_data_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = "./cache",
    chat_template: str | ChatTemplate = "auto",
    max_length: int = 2048,
    draft_vocab_size: int | None = None,
    draft_model_config=None,
    num_proc: int = 1,
    tokenizer=None,
    allow_no_supervised_tokens: bool = False,
) -> CacheResult:
    """Tokenise train (and eval) conversations, mask non-assistant tokens, build the draft vocab; cached.

    Args:
        target_model_path: target model (name, alias or directory); gives the tokenizer and vocab size ``V``.
        train_data_path / eval_data_path: conversations JSONL (``{"id", "conversations": [{"role","content"}]}``).
        cache_dir: parent directory of the hashed cache directories.
        chat_template: ``"auto"`` (the tokenizer's own template), a registered name, or a ChatTemplate.
        max_length: rows are truncated to this many tokens.
        draft_vocab_size: overrides the draft config's ``draft_vocab_size`` (default: :func:`specforge.eagle3.config.default_draft_vocab_size`).
        draft_model_config: path to (or dict of) the draft config JSON; checked against the target vocab.
        num_proc: worker processes for tokenisation.
        tokenizer: an already loaded target tokenizer (else loaded from ``target_model_path``).
        allow_no_supervised_tokens: build (with a warning) even when a split has no ``loss_mask == 1``
            token; by default that is an error (see :func:`check_supervised`).
    Returns:
        :class:`CacheResult` with ``train``/``eval`` Datasets (``input_ids [L]``, ``loss_mask [L]`` per row),
        ``d2t`` int64 ``[Vd]``, ``t2d`` bool ``[V]`` and the cache ``path``.
    """
    from specforge.fileio import atomic_path, clean_stale_temps
    from specforge.modeling.loading import load_config, load_tokenizer

    if max_length <= 0:
        raise SpecforgeError(f"--max-length must be positive, got {max_length}.")
    if num_proc < 1:
        raise SpecforgeError(f"--num-proc must be >= 1, got {num_proc}.")
    if tokenizer is None:
        tokenizer = load_tokenizer(target_model_path)
    target_vocab = int(load_config(target_model_path).vocab_size)
    vd = resolve_draft_vocab_size(target_vocab, draft_model_config, draft_vocab_size)
    renderer = get_renderer(chat_template, tokenizer)  # unknown names fail here, before any work

    ingredients: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "train": file_identity(train_data_path),
        "eval": file_identity(eval_data_path) if eval_data_path else None,
        "tokenizer": tokenizer_identity(tokenizer),
        "template": template_identity(chat_template, tokenizer),
        "max_length": max_length,
        "target_vocab_size": target_vocab,
        "draft_vocab_size": vd,
    }
    path = Path(cache_dir) / f"eagle3-{cache_key(ingredients)}"
    if (path / META_FILE).is_file():
        logger.info("cache hit: %s", path)
        result = load_cache(path)
        check_supervised(result.meta, max_length, allow_no_supervised_tokens)
        return result

    logger.info("cache miss: building %s", path)
    clean_stale_temps(path.parent, "eagle3-*")
    with atomic_path(path, is_dir=True) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary shared directory
        train, train_stats = _tokenize_file(train_data_path, tokenizer, renderer, max_length, num_proc, "train")
        ev, eval_stats = (None, None)
        if eval_data_path:
            ev, eval_stats = _tokenize_file(eval_data_path, tokenizer, renderer, max_length, num_proc, "eval")
        check_supervised({"train": train_stats, "eval": eval_stats}, max_length, allow_no_supervised_tokens)
        counts = count_loss_tokens(train, target_vocab)
        d2t, t2d = build_vocab_mapping(counts, vd)
        distinct = int((counts > 0).sum())
        if distinct < vd:
            logger.info("draft vocab: %d distinct loss tokens < %d; padded with unseen target ids.", distinct, vd)
        from specforge.fileio import save_safetensors

        train.save_to_disk(str(tmp / "train"))
        if ev is not None:
            ev.save_to_disk(str(tmp / "eval"))
        save_safetensors({"d2t": d2t.contiguous(), "t2d": t2d.contiguous()}, tmp / VOCAB_FILE)
        os.chmod(tmp / VOCAB_FILE, 0o644)
        meta = {
            "inputs": {**ingredients, "target_model_path": str(target_model_path),
                       "template": {k: v for k, v in ingredients["template"].items() if k != "jinja"}},
            "train": train_stats, "eval": eval_stats,
            "loss_tokens": int(counts.sum()), "distinct_loss_tokens": distinct,
            "draft_vocab_coverage": float(counts[t2d.numpy()].sum() / max(1, counts.sum())),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    result = load_cache(path)
    result.hit = False
    return result


__all__ = [
    "DEFAULT_DRAFT_VOCAB_SIZE",
    "FORMAT_VERSION",
    "CacheResult",
    "build_eagle3_dataset_cache",
    "load_cache",
    "resolve_draft_vocab_size",
]
