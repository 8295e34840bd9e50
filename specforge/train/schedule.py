"""Learning-rate schedule: linear warmup then cosine decay to zero."""

from __future__ import annotations

import math

import torch


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Number of warmup steps: ``ceil(warmup_ratio * total_steps)`` (0 when the ratio is 0)."""
    return math.ceil(warmup_ratio * total_steps) if warmup_ratio > 0 else 0


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak LR for the update number ``step`` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first update already
    moves); then ``0.5 * (1 + cos(pi * progress))`` with progress running from 0 to 1 over the
    remaining steps, clamped at 1 for steps past the horizon.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Picklable-free callable for :class:`torch.optim.lr_scheduler.LambdaLR` (state = its ints)."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """A ``LambdaLR`` applying :func:`lr_factor`; call ``scheduler.step()`` once per optimizer step."""
    fn = WarmupCosine(total_steps, warmup_steps_for(total_steps, warmup_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
