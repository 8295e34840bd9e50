"""Which dtype decoding runs in: ``--dtype auto`` picks bf16 where the hardware runs it fast.

On CPUs with native bf16 instructions (AVX512-BF16 or AMX) the small default target decodes ~2x faster in
bf16 than in fp32 (BENCHMARKS.md); without them bf16 is emulated and slower, so auto keeps fp32 there.
At temperature 0 the speculative output equals the greedy output of the target *in that dtype*: a bf16
target's greedy text can differ from the fp32 one's after a near-tie, so exactness is always against the
same-dtype target (pass ``--dtype float32`` to compare with fp32 references).
"""

from __future__ import annotations

import functools

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU advertises native bf16 arithmetic (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(x in flags for x in BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def decode_dtype(name: str | None, device: str) -> torch.dtype:
    """``--dtype`` of the decoding commands: ``auto`` = bf16 on CUDA and on CPUs with native bf16, else fp32;
    anything else as :func:`specforge.modeling.loading.resolve_dtype` reads it."""
    from specforge.modeling.loading import resolve_dtype

    if name in (None, "auto"):
        if str(device).startswith("cuda") or (str(device) == "cpu" and cpu_has_fast_bf16()):
            return torch.bfloat16
        return torch.float32
    return resolve_dtype(name, device)
