"""The one module that owns torch.distributed process groups for training.

Under ``torchrun`` (``WORLD_SIZE`` > 1) it initialises the default group (gloo on CPU, nccl on CUDA)
with the ``--dist-timeout`` in minutes; single-process runs never touch torch.distributed.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch

from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process (``world_size == 1`` when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world() -> DistInfo:
    """Read the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: str, timeout_minutes: float) -> DistInfo:
    """Initialise the default process group when launched with more than one process.

    ``device`` is the resolved device string; on CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    info = env_world()
    if not info.enabled:
        return info
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        except (RuntimeError, ValueError) as e:
            raise SpecforgeError(f"cannot initialise torch.distributed ({backend}): {e}".splitlines()[0]) from None
        logger.info("torch.distributed: %s, world size %d, timeout %s min", backend, info.world_size,
                    timeout_minutes)
    return info


def rank_device(device: str, info: DistInfo) -> str:
    """Per-rank device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; CPU is unchanged."""
    if info.enabled and device == "cuda":
        return f"cuda:{info.local_rank}"
    return device


def wrap_ddp(module: torch.nn.Module, device: str, info: DistInfo) -> torch.nn.Module:
    """Wrap the draft in DistributedDataParallel on multi-process runs; identity otherwise."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # The frozen embedding has no grad; find_unused_parameters stays False because every trainable
    # parameter takes part in every TTT step.
    return DistributedDataParallel(module, device_ids=ids)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a CPU metrics tensor over ranks (identity on one process); moves it through the
    process group's device (nccl needs CUDA tensors) and back."""
    if not info.enabled:
        return values
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
    out = values.to(dev, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def barrier(info: DistInfo) -> None:
    """Synchronise ranks (no-op on one process)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if this module created one."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
