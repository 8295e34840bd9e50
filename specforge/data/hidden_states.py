"""Offline EAGLE-3 training data: the target's hidden states, computed once and stored as safetensors shards.

Layout of ``OUTPUT_DIR``::

    meta.json                     format, target, aux layer ids, storage dtype, rows/shards per split, source cache
    vocab_mapping.safetensors     d2t int64 [Vd], t2d bool [V] (the cache's draft vocab)
    train-00000.safetensors ...   one shard = rows concatenated along tokens:
                                    input_ids int64 [T], loss_mask int8 [T], offsets int64 [n+1],
                                    aux_hidden [T, 3*Ht] and last_hidden [T, Ht] in the storage dtype
                                    (float8: float8_e4m3fn plus aux_scale [T], last_scale [T] float32)
    eval-00000.safetensors ...    the same for the eval split, when the cache has one

``last_hidden`` is the target's final *normed* hidden state, not logits (49152 logits per token would be 40x
bigger): training recomputes the teacher through the target's frozen lm_head, only at the positions the TTT
reads. Every file is written under a temporary name and renamed into place, so a run that is interrupted
leaves only whole shards, and re-running the same command skips them. No pickle anywhere.

Storage ``float8`` halves the store of ``bfloat16``: each row (token) of ``aux_hidden`` and of ``last_hidden`` is
scaled by its own ``amax(|row|) / 448`` into float8_e4m3fn (3 mantissa bits: at most 2^-4 relative error per
element, plus 2^-10 of the scale near zero), and the reader multiplies the scale back in (to bfloat16, or
float32 when asked), so the training code sees the same tensors as from any other store.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from specforge.errors import SpecforgeError
from specforge.fileio import atomic_open, atomic_path

logger = logging.getLogger(__name__)

FORMAT = "specforge-hidden-states/1"
META_FILE = "meta.json"
VOCAB_FILE = "vocab_mapping.safetensors"
# safetensors (>= 0.4, 0.8 here) saves and memory-maps float8_e4m3fn natively ("F8_E4M3"), so fp8 tensors are
# stored as such, not as uint8 bytes.
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16, "float8": FP8}
HIDDEN_KEYS = {"aux_hidden": "aux_scale", "last_hidden": "last_scale"}  # hidden tensor -> its per-token scale
SCALE_DTYPE = torch.float32


def shard_path(root: str | Path, split: str, index: int) -> Path:
    return Path(root) / f"{split}-{index:05d}.safetensors"


def estimate_bytes(num_tokens: int, target_hidden: int, dtype: torch.dtype) -> int:
    """Bytes of a store holding ``num_tokens`` tokens: 4 hidden vectors per token plus ids and masks (and for
    float8 the two per-token scales)."""
    scales = len(HIDDEN_KEYS) * torch.finfo(SCALE_DTYPE).bits // 8 if dtype == FP8 else 0
    return num_tokens * (4 * target_hidden * torch.finfo(dtype).bits // 8 + scales + 9)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [T, H]`` -> ``(q [T, H] float8_e4m3fn, scale [T] float32)`` with ``x ~= q * scale[:, None]``: one scale
    per row, ``amax(|row|) / 448`` (1 for an all-zero row), so each row uses the whole e4m3 range."""
    x = x.float()
    amax = x.abs().amax(-1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    # the clamp: x / (amax / 448) may round a hair past 448, and an out-of-range cast gives NaN, not 448
    q = (x / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale.to(SCALE_DTYPE)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8`: ``q * scale[:, None]`` (computed in float32) in ``dtype``."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def _splits(cache) -> list[tuple[str, Any]]:
    return [(name, rows) for name, rows in (("train", cache.train), ("eval", cache.eval)) if rows is not None]


def prepare_hidden_states(target, cache, output_dir: str | Path, storage_dtype: str = "bfloat16",
                          shard_rows: int = 256, device: str = "cpu", progress: bool = True,
                          source: dict | None = None) -> dict:
    """Run ``target`` (:class:`specforge.modeling.target.HFEagle3TargetModel`) once over every row of ``cache``
    (a :class:`specforge.data.cache.CacheResult`) and write the store; returns its ``meta``.

    Resumable: shards already present are skipped (the meta must match, storage dtype included, else one clear
    error). ``storage_dtype`` ``float8`` quantises every token's row with :func:`quantize_fp8`."""
    from tqdm.auto import tqdm

    from specforge.data.collate import row_lengths
    from specforge.fileio import save_safetensors

    if storage_dtype not in STORAGE_DTYPES:
        raise SpecforgeError(f"unknown storage dtype '{storage_dtype}'; use one of {', '.join(STORAGE_DTYPES)}.")
    if shard_rows < 1:
        raise SpecforgeError(f"--shard-size must be >= 1 (got {shard_rows}).")
    sdt = STORAGE_DTYPES[storage_dtype]
    root = Path(output_dir)
    Ht = int(target.model.config.hidden_size)
    lengths = {name: row_lengths(rows) for name, rows in _splits(cache)}
    meta: dict[str, Any] = {"format": FORMAT, "target_hidden_size": Ht, "aux_layer_ids": list(target.layer_ids),
            "storage_dtype": storage_dtype, "shard_rows": shard_rows, "source": source or {},
            "cache": str(cache.path),
            "splits": {name: {"rows": len(ls), "tokens": int(sum(ls)), "shards": math.ceil(len(ls) / shard_rows)}
                       for name, ls in lengths.items()}}
    if sdt == FP8:
        meta["fp8"] = {"format": "float8_e4m3fn", "scale": "per token, amax(|row|) / 448, float32",
                       "scales": HIDDEN_KEYS}
    if (root / META_FILE).is_file():
        old = json.loads((root / META_FILE).read_text(encoding="utf-8"))
        differ = sorted(k for k in set(old) | set(meta) if k != "cache" and old.get(k) != meta.get(k))
        if differ:
            was = "; ".join(f"{k} {old.get(k)!r} there, {meta.get(k)!r} now" for k in differ
                            if k in ("storage_dtype", "shard_rows"))
            raise SpecforgeError(f"{root} holds hidden states of other inputs or settings ({', '.join(differ)} "
                                 f"differ{': ' + was if was else ''}); pass a new --output-dir (or delete it) "
                                 "instead of mixing two stores.")
    total = sum(s["tokens"] for s in meta["splits"].values())
    logger.info("hidden states: %d rows, %d tokens -> about %.2f GiB in %s (%s)",
                sum(s["rows"] for s in meta["splits"].values()), total,
                estimate_bytes(total, Ht, sdt) / 2**30, root, storage_dtype)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_open(root / META_FILE) as f:
        json.dump(meta, f, indent=2)
    with atomic_path(root / VOCAB_FILE) as tmp:
        save_safetensors({"d2t": cache.d2t.contiguous(), "t2d": cache.t2d.contiguous()}, tmp)
    bar = tqdm(total=total, unit="tok", desc="hidden states", disable=not progress, dynamic_ncols=True)
    written = skipped = 0
    try:
        for name, rows in _splits(cache):
            ls = lengths[name]
            for s in range(meta["splits"][name]["shards"]):
                lo, hi = s * shard_rows, min(len(ls), (s + 1) * shard_rows)
                path = shard_path(root, name, s)
                if path.is_file():
                    skipped += 1
                    bar.update(sum(ls[lo:hi]))
                    continue
                parts: dict[str, list[torch.Tensor]] = {"input_ids": [], "loss_mask": [], "aux_hidden": [],
                                                        "last_hidden": []}
                if sdt == FP8:
                    parts.update({sk: [] for sk in HIDDEN_KEYS.values()})
                for i in range(lo, hi):
                    ids = torch.as_tensor(rows[i]["input_ids"], dtype=torch.long).reshape(1, -1)
                    out = target.generate_eagle3_data(ids.to(device))
                    parts["input_ids"].append(ids[0])
                    parts["loss_mask"].append(torch.as_tensor(rows[i]["loss_mask"], dtype=torch.int8).reshape(-1))
                    for k, x in (("aux_hidden", out.aux_hidden[0]), ("last_hidden", out.last_hidden[0])):
                        if not bool(torch.isfinite(x).all()):
                            raise SpecforgeError(
                                f"{name} row {i}: the target's {k} holds inf/NaN; storing it would train on garbage "
                                "(fp8 cannot even hold it). Run the target in float32 (--dtype float32) or drop the "
                                "row; nothing was written for this shard.")
                        if sdt == FP8:  # quantised where it was computed: a quarter of the fp32 bytes to move
                            q, scale = quantize_fp8(x)
                            parts[k].append(q.cpu())
                            parts[HIDDEN_KEYS[k]].append(scale.cpu())
                        else:
                            parts[k].append(x.to("cpu", sdt))
                    bar.update(ids.shape[1])
                tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
                tensors["offsets"] = torch.tensor([0] + list(torch.tensor(ls[lo:hi]).cumsum(0).tolist()))
                with atomic_path(path) as tmp:
                    save_safetensors(tensors, tmp)
                written += 1
    finally:
        bar.close()
    logger.info("hidden states: wrote %d shards, kept %d already complete, in %s", written, skipped, root)
    return meta


class HiddenStateRows:
    """One split of a store as a sequence of rows ``{input_ids [T], loss_mask [T], aux_hidden [T,3Ht],
    last_hidden [T,Ht]}``; shards are memory-mapped and only the requested row is read.

    The hidden states come in the storage dtype, except from a float8 store: those are dequantised (row times
    its scale) to ``dequant_dtype`` (bfloat16 by default; float32 for fp32 training)."""

    def __init__(self, root: str | Path, split: str = "train", dequant_dtype: torch.dtype = torch.bfloat16):
        from safetensors import safe_open

        self.root = Path(root)
        self.meta = read_meta(self.root)
        storage = self.meta.get("storage_dtype")
        if storage not in STORAGE_DTYPES:
            raise SpecforgeError(f"{self.root}: storage dtype {storage!r} is not one this specforge reads "
                                 f"({', '.join(STORAGE_DTYPES)}); re-run prepare-hidden-states with this version.")
        self.fp8 = STORAGE_DTYPES[storage] == FP8
        self.dequant_dtype = dequant_dtype
        info = self.meta["splits"].get(split)
        if info is None:
            raise SpecforgeError(f"{self.root} has no '{split}' hidden states; it holds {sorted(self.meta['splits'])}.")
        self._files, self._rows = [], []  # per shard: handle; per row: (shard, start, end)
        for s in range(info["shards"]):
            path = shard_path(self.root, split, s)
            if not path.is_file():
                raise SpecforgeError(f"{self.root}: shard {path.name} is missing (an interrupted run?); re-run "
                                     "prepare-hidden-states with the same flags to finish it.")
            f = safe_open(str(path), framework="pt")
            off = f.get_tensor("offsets").tolist()
            self._files.append(f)
            self._rows += [(s, a, b) for a, b in itertools.pairwise(off)]
        if len(self._rows) != info["rows"]:
            raise SpecforgeError(f"{self.root}: {len(self._rows)} {split} rows in the shards but meta.json says "
                                 f"{info['rows']}; re-run prepare-hidden-states into a new --output-dir.")

    def __len__(self) -> int:
        return len(self._rows)

    def lengths(self) -> list[int]:
        return [b - a for _, a, b in self._rows]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, a, b = self._rows[i]
        f = self._files[s]
        row = {k: f.get_slice(k)[a:b] for k in ("input_ids", "loss_mask", "aux_hidden", "last_hidden")}
        if self.fp8:
            for k, sk in HIDDEN_KEYS.items():
                row[k] = dequantize_fp8(row[k], f.get_slice(sk)[a:b], self.dequant_dtype)
        return row


def read_meta(root: str | Path) -> dict:
    """``meta.json`` of a store (one clear error when the directory is not one)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise SpecforgeError(f"--hidden-states-path {root}: no {META_FILE}; create it with "
                             "`specforge prepare-hidden-states`.")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise SpecforgeError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}.")
    return meta


def read_vocab(root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The store's ``(d2t [Vd], t2d [V])``."""
    from safetensors.torch import load_file

    v = load_file(str(Path(root) / VOCAB_FILE))
    return v["d2t"], v["t2d"]


def collate_hidden_states(rows, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad store rows: :func:`specforge.data.collate.pad_batch` plus ``aux_hidden [B,L,3Ht]`` and
    ``last_hidden [B,L,Ht]`` (zeros on padding, in the rows' dtype: the storage dtype, or the dequantised
    one of a float8 store)."""
    from specforge.data.collate import pad_batch

    batch = pad_batch(rows, pad_token_id)
    B, L = batch["input_ids"].shape
    for k in ("aux_hidden", "last_hidden"):
        x = torch.zeros(B, L, rows[0][k].shape[-1], dtype=rows[0][k].dtype)
        for b, r in enumerate(rows):
            x[b, :r[k].shape[0]] = r[k]
        batch[k] = x
    return batch


def check_store_fits(root: str | Path, target) -> None:
    """The store must come from a target of this hidden size and these aux layers (one clear error)."""
    meta = read_meta(root)
    Ht = int(target.model.config.hidden_size)
    if meta["target_hidden_size"] != Ht or list(meta["aux_layer_ids"]) != list(target.layer_ids):
        raise SpecforgeError(
            f"--hidden-states-path {root} was written from a target with hidden size {meta['target_hidden_size']} "
            f"and aux layers {meta['aux_layer_ids']}, but this target has {Ht} and {list(target.layer_ids)}; "
            "pass the --target-model-path it was prepared with.")
