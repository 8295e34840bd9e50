"""A batched generation engine with a slot KV cache and dynamic (continuous) batching.

Up to ``max_batch`` requests decode together. Every active request owns one *slot* (a row) of one
preallocated ``[max_batch, KVH, capacity, D]`` key/value buffer per layer; its valid keys sit in
``[0, length)`` of that row. A decode step feeds each active row its last token at position ``length``,
writes the new key/value in place (no ``torch.cat`` of the whole cache per step, unlike ``DynamicCache``),
and masks the unused tail of every row. When a request finishes, the last active row is moved into its
slot (active rows stay ``[0, n)``, so the decode forward reads a view, never a gathered copy) and the next
queued request is prefilled into the free slot: one long answer never idles the batch.

The forward is the HF model's own (any causal LM whose attention layers call ``cache.update``), with
explicit position ids and a 4-D additive mask, so the engine is model-agnostic and greedy output equals
``model.generate``'s per row (the tests check it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from specforge.errors import SpecforgeError
from specforge.inference.sampling import greedy_tokens
from specforge.modeling.compat import cache_kwargs


@dataclass
class GenRequest:
    """One prompt to complete. prompt: token ids; the result fields are filled in by the engine.

    on_token(request, new_ids) is called after every step that added tokens (for streaming);
    on_done(request) once when it finished (finish_reason ``stop``, ``length``, ``error`` or ``cancelled``).
    Setting ``cancelled`` (from any thread) frees the request's slot at the next step.
    """

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    on_token: Callable | None = None
    on_done: Callable | None = None
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    generator: torch.Generator | None = None
    cancelled: bool = False


class _SlotState:
    """What every layer needs to know about the forward in flight (shared by all layers)."""

    def __init__(self):
        self.rows = slice(0, 0)  # slots the forward's batch rows map to (contiguous)
        self.write_pos: torch.Tensor | None = None  # [B', T] cache slot of each new token
        self.width = 0  # slots returned to attention (the mask covers exactly these)
        self.capacity = 0
        self.max_batch = 0


class _SlotLayer:
    """One layer's slot cache: buffers [max_batch, KVH, capacity, D], written in place."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, state: _SlotState):
        self.state = state
        self.keys: Any = None  # [B, KVH, S, D] once the first forward allocated it
        self.values: Any = None
        self.is_initialized = False

    def _alloc(self, like: torch.Tensor, capacity: int) -> torch.Tensor:
        shape = (self.state.max_batch, like.shape[1], capacity, like.shape[3])
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    def grow(self, capacity: int) -> None:
        """Reallocate to ``capacity`` slots per row, keeping the contents."""
        for name in ("keys", "values"):
            old = getattr(self, name)
            if old is not None and old.shape[2] < capacity:
                new = self._alloc(old, capacity)
                new[:, :, : old.shape[2]] = old
                setattr(self, name, new)

    def update(self, key_states, value_states, *args, **kwargs):
        """key/value_states [B', KVH, T, D] -> the rows' keys/values [B', KVH, width, D] (views)."""
        st = self.state
        if self.keys is None:
            self.keys = self._alloc(key_states, st.capacity)
            self.values = self._alloc(value_states, st.capacity)
            self.is_initialized = True
        k, v = self.keys[st.rows], self.values[st.rows]
        b, t = st.write_pos.shape
        bidx = torch.arange(b, device=st.write_pos.device)[:, None].expand(b, t)
        # buf[rows, :, cols] indexes as [B', T, KVH, D]
        k[bidx, :, st.write_pos] = key_states.transpose(1, 2)
        v[bidx, :, st.write_pos] = value_states.transpose(1, 2)
        return k[:, :, : st.width], v[:, :, : st.width]

    def get_seq_length(self) -> int:
        return self.state.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.state.width, 0

    def get_max_length(self) -> int:
        return -1

    def move_row(self, src: int, dst: int, length: int) -> None:
        if self.keys is not None:
            self.keys[dst, :, :length] = self.keys[src, :, :length]
            self.values[dst, :, :length] = self.values[src, :, :length]


def _make_cache(num_layers: int, state: _SlotState):
    from transformers.cache_utils import Cache

    return Cache(layers=[_SlotLayer(state) for _ in range(num_layers)])  # type: ignore[misc]  # duck-typed layers


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p``. logits [V] -> [V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens after the mass is already reached
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)


class BatchEngine:
    """Continuous-batching generator over an HF causal LM (eval mode, no grad).

    ``add(request)`` queues; ``step()`` admits queued requests into free slots (prefill), runs one batched
    decode step and returns the requests that finished. Not thread-safe: one thread drives it.
    """

    def __init__(self, model, eos_token_ids, max_batch: int = 8, prefill_chunk: int = 512,
                 max_length: int | None = None):
        if max_batch < 1:
            raise SpecforgeError(f"--batch-size must be >= 1 (got {max_batch}).")
        self.model = model
        self.eos = {int(e) for e in eos_token_ids}
        self.max_batch = max_batch
        self.prefill_chunk = max(1, prefill_chunk)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 1 << 30
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.state = _SlotState()
        self.state.max_batch = max_batch
        self.state.capacity = 256
        self.cache = _make_cache(cfg.num_hidden_layers, self.state)
        self.queue: deque[GenRequest] = deque()
        self.active: list[GenRequest] = []  # slot i holds active[i]
        self.lengths: list[int] = []  # valid cache slots of each active row
        self.generated_tokens = 0

    # ---- public -----------------------------------------------------------------------------------

    def add(self, req: GenRequest) -> None:
        """Queue a request (validated here: an impossible one finishes at once with an error)."""
        if not req.prompt:
            return self._fail(req, "empty prompt")
        if len(req.prompt) + 1 > self.max_length:
            return self._fail(req, f"prompt of {len(req.prompt)} tokens exceeds the model's context of "
                                   f"{self.max_length} tokens")
        if req.temperature > 0:
            req.generator = torch.Generator().manual_seed(int(req.seed) & 0x7FFFFFFFFFFFFFFF)
        self.queue.append(req)

    def has_work(self) -> bool:
        return bool(self.queue or self.active)

    @property
    def num_active(self) -> int:
        return len(self.active)

    @torch.no_grad()
    def step(self) -> list[GenRequest]:
        """Admit queued requests, decode one token for every active row; return finished requests."""
        finished: list[GenRequest] = []
        for r in self.active:
            if r.cancelled:
                r.finish_reason = "cancelled"
        while self.queue and len(self.active) < self.max_batch:
            req = self.queue.popleft()
            if req.cancelled:
                req.finish_reason = "cancelled"
                finished.append(req)
                if req.on_done:
                    req.on_done(req)
                continue
            slot = len(self.active)
            logits = self._prefill(req.prompt, slot)
            self.active.append(req)
            self.lengths.append(len(req.prompt))
            self._emit([req], self._pick(logits, [req]))
        self._retire(finished)
        if self.active:
            n = len(self.active)
            lengths = torch.tensor(self.lengths, device=self.device)
            ids = torch.tensor([[r.output[-1]] for r in self.active], device=self.device)
            width = int(lengths.max()) + 1
            self._ensure_capacity(width)
            st = self.state
            st.rows, st.write_pos, st.width = slice(0, n), lengths[:, None], width
            valid = torch.arange(width, device=self.device)[None, :] <= lengths[:, None]  # [n, width]
            logits = self._forward(ids, lengths[:, None], valid[:, None, :])
            self.lengths = [x + 1 for x in self.lengths]
            self._emit(self.active, self._pick(logits[:, -1], self.active))
            self._retire(finished)
        return finished

    def run(self, requests: list[GenRequest]) -> list[GenRequest]:
        """Complete a list of requests (convenience for tests and benchmarks)."""
        for r in requests:
            self.add(r)
        while self.has_work():
            self.step()
        return requests

    # ---- internals --------------------------------------------------------------------------------

    def _fail(self, req: GenRequest, reason: str) -> None:
        req.finish_reason, req.error = "error", reason
        if req.on_done:
            req.on_done(req)

    def _ensure_capacity(self, width: int) -> None:
        if width > self.state.capacity:
            cap = max(width, min(2 * self.state.capacity, self.max_length + 1))
            cap = int(math.ceil(cap / 64) * 64)
            for layer in self.cache.layers:
                layer.grow(cap)
            self.state.capacity = cap

    def _forward(self, ids, pos, valid):
        """ids/pos [B', T], valid bool [B', T, width] -> logits [B', T', V] (T' = 1)."""
        mask = torch.zeros(valid.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~valid, torch.finfo(self.dtype).min)
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask[:, None],
                         **cache_kwargs(self.model, self.cache), use_cache=True, logits_to_keep=1)
        return out.logits

    def _prefill(self, prompt: list[int], slot: int) -> torch.Tensor:
        """Write the prompt's keys/values into ``slot`` in chunks; returns the last position's logits [1, V]."""
        st = self.state
        p = len(prompt)
        self._ensure_capacity(p)
        ids_all = torch.tensor([prompt], device=self.device)
        logits: Any = None
        for a in range(0, p, self.prefill_chunk):
            b = min(p, a + self.prefill_chunk)
            pos = torch.arange(a, b, device=self.device)[None, :]
            st.rows, st.write_pos, st.width = slice(slot, slot + 1), pos, b
            valid = torch.arange(b, device=self.device)[None, :] <= pos[0, :, None]  # [T, b] causal
            logits = self._forward(ids_all[:, a:b], pos, valid[None])
        return logits[:, -1]

    def _pick(self, logits: torch.Tensor, reqs: list[GenRequest]) -> list[int]:
        """logits [B', V] -> one token per request (greedy, or its own seeded sampler)."""
        out = greedy_tokens(logits).tolist()
        for i, r in enumerate(reqs):
            if r.temperature > 0:
                lg = top_p_filter(logits[i].float() / r.temperature, r.top_p)
                out[i] = int(torch.multinomial(lg.softmax(-1).cpu(), 1, generator=r.generator))
        return out

    def _emit(self, reqs: list[GenRequest], tokens: list[int]) -> None:
        for r, t in zip(reqs, tokens):
            r.output.append(t)
            self.generated_tokens += 1
            if t in self.eos:
                r.finish_reason = "stop"
            elif len(r.output) >= r.max_new_tokens or len(r.prompt) + len(r.output) >= self.max_length:
                r.finish_reason = "length"
            if r.on_token:
                r.on_token(r, [t])

    def _retire(self, finished: list[GenRequest]) -> None:
        """Remove finished rows, moving the last active row into each freed slot."""
        i = 0
        while i < len(self.active):
            req = self.active[i]
            if req.finish_reason is None:
                i += 1
                continue
            last = len(self.active) - 1
            if i != last:
                for layer in self.cache.layers:
                    layer.move_row(last, i, self.lengths[last])
                self.active[i], self.lengths[i] = self.active[last], self.lengths[last]
            self.active.pop()
            self.lengths.pop()
            finished.append(req)
            if req.on_done:
                req.on_done(req)
