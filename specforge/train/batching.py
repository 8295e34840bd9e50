"""Deterministic, padding-aware batch order for one epoch.

The order depends only on ``(seed, epoch, lengths, batch_size, rank, world_size)``, so a resumed run
finds its place again from ``(epoch, group index)`` alone — no sampler state to save.
"""

from __future__ import annotations

import torch

# Samples are sorted by length inside windows of this many batches, so batches hold similar lengths
# (less padding) while the epoch order stays shuffled.
BUCKET_BATCHES = 64


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Row indices of every micro-batch of ``epoch`` for ``rank``.

    ``lengths[i]`` is the token count of row i. With ``batch_size > 1`` rows are shuffled, sorted by
    length within windows of ``BUCKET_BATCHES * batch_size`` rows, cut into batches, and the batches
    shuffled again. With several ranks every rank gets the same number of batches (the remainder
    that cannot be split evenly is dropped, so DDP ranks stay in lock-step).
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    order = torch.randperm(len(lengths), generator=g).tolist()
    if batch_size > 1:
        window = BUCKET_BATCHES * batch_size
        bucketed = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            bucketed += sorted(chunk, key=lambda i: -lengths[i])  # stable: ties keep shuffled order
        order = bucketed
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if batch_size > 1:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
    if world_size > 1:
        usable = len(batches) - len(batches) % world_size
        batches = batches[rank:usable:world_size]
    return batches


def group_batches(batches: list[list[int]], accumulation_steps: int) -> list[list[list[int]]]:
    """Micro-batches grouped per optimizer step (the last group of an epoch may be shorter)."""
    return [batches[i:i + accumulation_steps] for i in range(0, len(batches), accumulation_steps)]
