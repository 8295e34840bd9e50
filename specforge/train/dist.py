"""The one module that owns torch.distributed process groups for training.

Under ``torchrun`` (``WORLD_SIZE`` > 1) it initialises the default group (gloo on CPU, nccl on CUDA)
with the ``--dist-timeout`` in minutes; single-process runs never touch torch.distributed.

With ``--tp-size T`` the world of ``W = T x D`` ranks is a ``(dp=D, tp=T)`` device mesh: ranks
``[d*T, (d+1)*T)`` form tensor-parallel group ``d`` (consecutive ranks, so a TP group stays inside
a node when ``T`` divides the processes per node). Every rank of a TP group reads the same batch
(data position = the DP index), runs its shard of the one target forward and gets the full aux
states; the draft is replicated on all ranks and DDP averages its gradients over the whole world,
which equals the average over the D data-parallel replicas because the T ranks of a group hold
identical gradients.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process (``world_size == 1`` when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp_size: int = 1
    tp_group: Any = field(default=None, compare=False, repr=False)  # None when tp_size == 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tp_rank(self) -> int:
        """Rank inside this process's tensor-parallel group."""
        return self.rank % self.tp_size

    @property
    def dp_rank(self) -> int:
        """Index of this process's data-parallel replica (its TP group); picks its data shard."""
        return self.rank // self.tp_size

    @property
    def dp_size(self) -> int:
        """Number of data-parallel replicas (``world_size // tp_size``)."""
        return self.world_size // self.tp_size

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world() -> DistInfo:
    """Read the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                    int(os.environ.get("LOCAL_RANK", "0")))


def check_tp_size(tp_size: int, world_size: int) -> None:
    """One clear line when ``tp_size`` cannot split ``world_size`` processes into TP groups."""
    if tp_size < 1 or world_size % tp_size:
        raise SpecforgeError(
            f"--tp-size {tp_size} does not divide the world size {world_size} (world = tp x dp); launch "
            f"torchrun with a multiple of {tp_size} processes in all, or change --tp-size.")


def init_distributed(device: str, timeout_minutes: float, tp_size: int = 1) -> DistInfo:
    """Initialise the default process group when launched with more than one process, and with
    ``tp_size > 1`` the ``(dp, tp)`` device mesh whose ``tp`` groups the TP target layers use.

    ``device`` is the resolved device string; on CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    info = env_world()
    check_tp_size(tp_size, info.world_size)
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
    if tp_size > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(torch.device(device).type, (info.world_size // tp_size, tp_size),
                                mesh_dim_names=("dp", "tp"))
        info = DistInfo(info.rank, info.world_size, info.local_rank, tp_size, mesh["tp"].get_group())
        logger.info("tensor parallel: %d groups of %d ranks (this rank: group %d, tp rank %d)", info.dp_size,
                    tp_size, info.dp_rank, info.tp_rank)
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


def wrap_fsdp(module: torch.nn.Module, device: str, info: DistInfo) -> torch.nn.Module:
    """Shard ``module`` (the TTT unroll over the draft) with FSDP2 ``fully_shard`` over all ranks;
    identity on one process.

    Parameters, gradients and AdamW moments become DTensors sharded on dim 0 (1/world each); the
    forward all-gathers them and the backward reduce-scatters gradients averaged over the world, the
    same average as DDP (TP ranks of one group hold identical gradients, so with ``--tp-size`` this is
    the data-parallel mean). Checkpoints gather full tensors: :mod:`specforge.train.sharded`.
    """
    if not info.enabled:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(device).type, (info.world_size,), mesh_dim_names=("fsdp",))
    return fully_shard(module, mesh=mesh)  # type: ignore[return-value]  # an FSDPModule is the same nn.Module


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
