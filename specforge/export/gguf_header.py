"""A fast reader for GGUF headers: metadata values and tensor infos, without touching tensor data.

``gguf.GGUFReader`` builds a numpy view per array element (~100k for a 49k-token vocabulary), which
takes seconds - tens of seconds on a loaded 2-core machine. Exports read the target's header and check
the written draft, so this parses the same format (GGUF v2/v3, little-endian) directly with ``struct``.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError

# GGUFValueType ids -> struct format (STRING 8 and ARRAY 9 are handled separately)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
          12: "<f8"}
STRING, ARRAY = 8, 9


@dataclass
class TensorInfo:
    """One tensor of a GGUF file: ``shape`` in numpy (torch) order, ggml type id, absolute data offset."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass
class GGUFHeader:
    """Metadata ``values`` (key -> python value) and their value ``types`` ((type, item type|None)), tensors."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    types: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def get(self, key: str, default=None):
        return self.values.get(key, default)


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string(self) -> str:
        n = self.unpack("Q")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype == STRING:
            return self.string(), None
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype]), None
        if vtype != ARRAY:
            raise ValueError(f"unknown value type {vtype}")
        itype, n = self.unpack("I"), self.unpack("Q")
        if itype in _NUMPY:
            import numpy as np

            arr = np.frombuffer(self.buf, dtype=_NUMPY[itype], count=n, offset=self.pos)
            self.pos += arr.nbytes
            return arr.tolist(), itype
        return [self.value(itype)[0] for _ in range(n)], itype


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor infos (one clear error if it is not a GGUF file)."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, str(path))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise SpecforgeError(f"{path}: not a readable GGUF file ({e}).") from None


def _parse(buf, path: str) -> GGUFHeader:
    c = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("bad magic")
    c.pos = 4
    version, n_tensors, n_kv = c.unpack("I"), c.unpack("Q"), c.unpack("Q")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}")
    h = GGUFHeader(path)
    for _ in range(n_kv):
        key, vtype = c.string(), c.unpack("I")
        h.values[key], sub = c.value(vtype)
        h.types[key] = (vtype, sub)
    infos = []
    for _ in range(n_tensors):
        name, nd = c.string(), c.unpack("I")
        ne = [c.unpack("Q") for _ in range(nd)]
        infos.append((name, tuple(reversed(ne)), c.unpack("I"), c.unpack("Q")))
    align = int(h.values.get("general.alignment", 32))
    start = c.pos + (-c.pos % align)
    for name, shape, gtype, off in infos:
        h.tensors[name] = TensorInfo(name, shape, gtype, start + off)
    return h


def read_tensor_int64(path: str | os.PathLike, info: TensorInfo):
    """The data of an I64 tensor as a numpy array (shape ``info.shape``)."""
    import numpy as np

    n = 1
    for s in info.shape:
        n *= s
    return np.fromfile(str(path), dtype="<i8", count=n, offset=info.offset).reshape(info.shape)
