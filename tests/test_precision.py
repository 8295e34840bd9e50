"""``--dtype auto`` of the decoding commands: bf16 on CUDA and on CPUs with native bf16, else fp32."""

from __future__ import annotations

import pytest
import torch

from specforge.errors import SpecforgeError
from specforge.inference import precision


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype(monkeypatch, fast):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    assert precision.decode_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)
    assert precision.decode_dtype(None, "cuda:0") == torch.bfloat16
    assert precision.decode_dtype("float32", "cpu") == torch.float32
    assert precision.decode_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(SpecforgeError, match="unknown dtype"):
        precision.decode_dtype("float8", "cpu")


def test_cpu_flags_are_read(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open
    fake = tmp_path / "cpuinfo"
    for flags, want in (("fpu sse avx512f avx512_bf16", True), ("fpu sse avx2", False)):
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
        precision.cpu_has_fast_bf16.cache_clear()
        assert precision.cpu_has_fast_bf16() is want
    precision.cpu_has_fast_bf16.cache_clear()
