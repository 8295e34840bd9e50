"""Ragged KV caches for batched speculative decoding.

Every row ``b`` of a batch keeps its valid keys/values in slots ``[0, L[b])`` of a shared ``[B, H, S, D]``
tensor; slots ``[L[b], S)`` hold stale data that the attention mask hides. After a verification step the
new slots of the accepted path are *moved* down to ``[L[b], L[b] + c[b])`` and the tensor is cropped to
``max(L + c)`` — only the few new slots are touched, never the whole cache, so rows with different
acceptance lengths share one tensor and one forward pass.
"""

from __future__ import annotations

import torch


def slot_moves(lengths: torch.Tensor, src: torch.Tensor, counts: torch.Tensor, past: int):
    """Plan of :func:`keep_new_slots` for caches of ``past + T`` slots: ``(rows, dst, srcpos, new_len)``.

    Computed once per decoding step and applied to every layer's keys and values (one plan instead of
    2 x layers small index computations and device syncs). rows/dst/srcpos are None when nothing moves.
    """
    t = src.shape[1]
    j = torch.arange(t, device=src.device)
    rows, cols = torch.nonzero(j[None, :] < counts[:, None], as_tuple=True)
    new_len = int((lengths + counts).max()) if lengths.numel() else 0
    if rows.numel():
        dst = lengths[rows] + cols
        srcpos = past + src[rows, cols]
        moved = dst != srcpos
        if moved.any():
            return rows[moved], dst[moved], srcpos[moved], new_len
    return None, None, None, new_len


def apply_slot_moves(buf: torch.Tensor, moves) -> torch.Tensor:
    """Apply a :func:`slot_moves` plan to ``buf [B, H, S+T, D]`` in place; returns the cropped view."""
    rows, dst, srcpos, new_len = moves
    if rows is not None:
        # Advanced indexing on dims 0 and 2 copies the source first, so overlapping moves are safe.
        buf[rows, :, dst] = buf[rows, :, srcpos]
    return buf[:, :, :new_len]


def keep_new_slots(buf: torch.Tensor, lengths: torch.Tensor, src: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Move kept new slots next to each row's valid prefix and crop the tail.

    buf [B, H, S+T, D]: cache whose last T slots were just appended; lengths [B]: valid prefix L per row
    (<= S); src [B, T]: new-slot indices (0..T-1) to keep, in order, first ``counts[b]`` used; counts [B].
    Returns a view/tensor [B, H, S', D] with S' = max(L + counts). Writes into ``buf`` in place.
    """
    return apply_slot_moves(buf, slot_moves(lengths, src, counts, buf.shape[2] - src.shape[1]))


def valid_key_mask(lengths: torch.Tensor, past_len: int) -> torch.Tensor:
    """``mask[b, s]`` True for the valid cached slots ``s < lengths[b]``. lengths [B] -> bool [B, past_len]."""
    return torch.arange(past_len, device=lengths.device)[None, :] < lengths[:, None]


def step_mask(lengths: torch.Tensor, past_len: int, new_mask: torch.Tensor) -> torch.Tensor:
    """Attention mask of T new queries over ``past_len`` cached slots plus the T new slots.

    lengths [B]; new_mask bool [B, T, T] (which new slots each new query sees) -> bool [B, T, past_len + T].
    """
    b, t, _ = new_mask.shape
    past = valid_key_mask(lengths, past_len)[:, None, :].expand(b, t, past_len)
    return torch.cat([past, new_mask], dim=2)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask [B, T, K] (True = attend) -> additive float mask [B, 1, T, K] for HF attention.

    A float mask works with both the eager (adds it) and the SDPA attention of transformers; every query
    row must allow at least one key (callers always allow the query's own slot) so no row is all -inf.
    """
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[:, None]


def contiguous_src(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the valid new slots in order, and their count. valid bool [B, T] -> (src [B, T], counts [B])."""
    t = valid.shape[1]
    j = torch.arange(t, device=valid.device)
    # Stable sort: valid slots first, in their original order.
    key = (~valid).long() * t + j[None, :]
    return key.argsort(dim=1), valid.sum(1)
