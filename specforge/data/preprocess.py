"""Tokenise conversations into ``input_ids`` and a ``loss_mask`` (1 = assistant output).

The text of a whole conversation is rendered once (see :mod:`specforge.data.template`) and tokenised
once, exactly as ``tokenizer.apply_chat_template(..., tokenize=True)`` would; each token's character
offsets then say whether it lies in an assistant span. Tokenising segments separately would be simpler
but gives different ids wherever BPE merges across a boundary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specforge.data.template import ROLES, Renderer, Span
from specforge.errors import SpecforgeError

NO_SPAN_WARNING = "No assistant response spans found in the conversation text"


def spans_to_token_mask(offsets: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """Mark tokens whose first character lies inside an assistant span.

    Args:
        offsets: int array ``[T, 2]`` of token ``(start, end)`` character offsets.
        spans: sorted, non-overlapping ``[start, end)`` character spans.
    Returns:
        int8 array ``[T]``, 1 for tokens that start inside a span.
    """
    if len(spans) == 0 or len(offsets) == 0:
        return np.zeros(len(offsets), dtype=np.int8)
    sp = np.asarray(spans, dtype=np.int64)
    starts = offsets[:, 0]
    # Index of the last span starting at or before each token; the token is inside if it starts before that span ends.
    idx = np.searchsorted(sp[:, 0], starts, side="right") - 1
    inside = (idx >= 0) & (starts < sp[np.maximum(idx, 0), 1])
    return inside.astype(np.int8)


def tokenize_conversations(
    conversations: Sequence[Sequence[dict]], tokenizer, renderer: Renderer, max_length: int
) -> dict[str, list]:
    """Render and tokenise a batch of conversations.

    Returns a dict of columns: ``input_ids`` (list of ``[L_i]`` int lists, ``L_i <= max_length``),
    ``loss_mask`` (same shapes, 0/1), ``num_spans`` (assistant spans found before truncation) and
    ``truncated`` (whether the row was cut to ``max_length``).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise SpecforgeError(
            "build-cache needs a fast (Rust) tokenizer for character offsets; this model only has a slow one."
        )
    texts, all_spans = [], []
    for conv in conversations:
        text, spans = renderer.render(conv)
        texts.append(text)
        all_spans.append(spans)
    encoded = _encode_truncated(tokenizer, texts, max_length)
    out: dict[str, list] = {"input_ids": [], "loss_mask": [], "num_spans": [], "truncated": []}
    for (ids, offs, truncated), spans in zip(encoded, all_spans):
        mask = spans_to_token_mask(np.asarray(offs, dtype=np.int64).reshape(-1, 2), spans)
        out["input_ids"].append(list(ids))
        out["loss_mask"].append(mask.tolist())
        out["num_spans"].append(len(spans))
        out["truncated"].append(truncated)
    return out


# Tokenising a 50k-character conversation only to keep its first 2048 tokens wastes most of the time, so
# long texts are first cut at a whitespace boundary well past max_length tokens (CUT_CHARS_PER_TOKEN
# chars per token). The pre-tokenizer splits at that whitespace in the full text too, so every token that
# ends before the trailing whitespace run is identical; a row is re-tokenised in full unless its first
# max_length tokens all end before that run.
CUT_CHARS_PER_TOKEN = 6


def _whitespace_cut(text: str, limit: int) -> tuple[int, int] | None:
    """``(r, q)``: ``text[r:q]`` is the last whitespace run ending at or before ``limit``; None if no cut."""
    if len(text) <= limit:
        return None
    q = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit), text.rfind("\t", 0, limit)) + 1
    if q <= 0:
        return None
    r = q - 1
    while r > 0 and text[r - 1].isspace():
        r -= 1
    return r, q


def _encode_truncated(tokenizer, texts: list[str], max_length: int) -> list[tuple[list, list, bool]]:
    """``[(ids[:max_length], offsets[:max_length], was_truncated)]``, equal to tokenising in full."""
    cuts = [_whitespace_cut(t, max_length * CUT_CHARS_PER_TOKEN) for t in texts]
    first = [t[: c[1]] if c else t for t, c in zip(texts, cuts)]
    enc = tokenizer(first, add_special_tokens=False, return_offsets_mapping=True)
    result: list = [None] * len(texts)
    redo = []
    for i, (ids, offs, cut) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], cuts)):
        if cut is None:
            result[i] = (ids[:max_length], offs[:max_length], len(ids) > max_length)
        elif len(ids) > max_length and offs[max_length - 1][1] <= cut[0]:
            result[i] = (ids[:max_length], offs[:max_length], True)
        else:
            redo.append(i)
    if redo:
        enc = tokenizer([texts[i] for i in redo], add_special_tokens=False, return_offsets_mapping=True)
        for i, ids, offs in zip(redo, enc["input_ids"], enc["offset_mapping"]):
            result[i] = (ids[:max_length], offs[:max_length], len(ids) > max_length)
    return result


def tokenize_conversation(messages: Sequence[dict], tokenizer, renderer: Renderer, max_length: int = 1 << 30):
    """One conversation -> ``(input_ids [L], loss_mask [L])`` as int lists."""
    out = tokenize_conversations([messages], tokenizer, renderer, max_length)
    return out["input_ids"][0], out["loss_mask"][0]


def validate_row(path: str | os.PathLike, lineno: int, rec: dict[str, Any]) -> list[dict]:
    """Check one JSONL row and return its conversation as ``[{"role", "content"}, ...]``.

    Raises :class:`SpecforgeError` naming ``path:lineno`` when ``conversations`` is missing or not a
    list, a turn is not an object, its role is not system/user/assistant, or its content is not text.
    """
    conv = rec.get("conversations")
    if not isinstance(conv, list):
        what = "has no 'conversations' list" if conv is None else "has a 'conversations' that is not a list"
        raise SpecforgeError(
            f"{path}:{lineno}: row {what}; rows must look like "
            '{"id": ..., "conversations": [{"role": "user", "content": "..."}, ...]} (run prepare-data first).'
        )
    if not conv:
        raise SpecforgeError(f"{path}:{lineno}: row has an empty 'conversations' list, nothing to train on; "
                             "drop such rows (prepare-data skips them).")
    msgs = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise SpecforgeError(f"{path}:{lineno}: turn {i} is not an object with 'role' and 'content'.")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise SpecforgeError(
                f"{path}:{lineno}: turn {i} has unknown role {role!r}; use one of {', '.join(ROLES)} "
                "(prepare-data maps ShareGPT roles)."
            )
        if not isinstance(content, str):
            raise SpecforgeError(f"{path}:{lineno}: turn {i} has no text 'content'.")
        msgs.append({"role": role, "content": content})
    return msgs


def load_conversations(path: str | os.PathLike) -> list[list[dict]]:
    """Read and validate a conversations JSONL file (as written by prepare-data).

    Returns one ``[{"role", "content"}, ...]`` list per row. Malformed lines, bad rows and an empty
    file raise :class:`SpecforgeError` naming the file (and line).
    """
    from specforge.fileio import iter_jsonl

    rows = [validate_row(path, lineno, rec) for lineno, rec in iter_jsonl(path)]
    if not rows:
        raise SpecforgeError(f"{Path(path)}: no conversations in the file; pass a non-empty JSONL file.")
    return rows
