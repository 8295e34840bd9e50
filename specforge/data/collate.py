"""Batching tokenised rows for training: right padding to the longest row of the batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def pad_batch(rows: Sequence[Mapping], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad rows of ``input_ids`` / ``loss_mask`` into a batch.

    Args:
        rows: ``B`` mappings with ``input_ids`` and ``loss_mask`` (int lists or 1-D tensors, length ``L_b``).
        pad_token_id: id written into padded ``input_ids`` positions.
        pad_to_multiple_of: optionally round the padded length ``L`` up to a multiple of this.
    Returns:
        ``input_ids``, ``attention_mask`` (1 on real tokens), ``loss_mask`` (0 on padding):
        LongTensors ``[B, L]`` with ``L = max_b L_b`` (rounded up when asked).
    """
    if not rows:
        raise ValueError("pad_batch needs at least one row")
    ids = [torch.as_tensor(r["input_ids"], dtype=torch.long).reshape(-1) for r in rows]
    masks = [torch.as_tensor(r["loss_mask"], dtype=torch.long).reshape(-1) for r in rows]
    for i, m in zip(ids, masks):
        if i.numel() != m.numel():
            raise ValueError(f"row has {i.numel()} input_ids but {m.numel()} loss_mask entries")
    length = max(i.numel() for i in ids)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(rows)
    out_ids = torch.full((batch, length), int(pad_token_id), dtype=torch.long)
    attn = torch.zeros(batch, length, dtype=torch.long)
    loss = torch.zeros(batch, length, dtype=torch.long)
    for b, (i, m) in enumerate(zip(ids, masks)):
        n = i.numel()
        out_ids[b, :n] = i
        attn[b, :n] = 1
        loss[b, :n] = m
    return {"input_ids": out_ids, "attention_mask": attn, "loss_mask": loss}


def row_lengths(rows) -> list[int]:
    """Token count of every row: from the Arrow column of a ``datasets.Dataset`` without decoding it
    into Python lists, or from a list of dicts."""
    if hasattr(rows, "lengths"):  # e.g. a hidden-state store: lengths without reading the rows
        return list(rows.lengths())
    if hasattr(rows, "with_format"):
        import pyarrow.compute as pc

        col = rows.with_format("arrow")[:].column("input_ids")
        return pc.list_value_length(col).to_pylist()
    return [len(r["input_ids"]) for r in rows]
