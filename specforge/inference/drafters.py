"""Drafters: what proposes tokens to the speculative decoder.

The decoder talks to a drafter through four calls (all tensors batched, ``B`` rows):

* ``commit(tokens, aux, positions, valid)`` — newly accepted context. Slot ``t`` carries the token at
  sequence index ``t + 1``, the target's aux hidden state at index ``t`` and position id ``t`` (EAGLE
  pairs the target state at ``t`` with the *next* token). ``valid`` marks the real slots of each row (a
  contiguous run). After a commit the drafter is ready to propose the continuation of the last slot.
* ``first(topk) -> (ids [B, k], logp [B, k])`` — the root's top-k children (target token ids, log-probs).
* ``expand(tokens, parent_rows, paths, depth, topk) -> (ids [B, K, k], logp [B, K, k])`` — top-k children of
  the K frontier nodes at ``depth`` (tokens [B, K]; ``parent_rows`` [B, K] index the rows of the previous
  ``expand`` call, or are 0 at depth 1; ``paths`` [B, K, depth] the tokens from the root's child down).
* ``select_rows(idx)`` — keep only these batch rows (finished sequences leave the batch).

:class:`Eagle3Drafter` wraps an EAGLE-3 draft model; :class:`OracleDrafter` (knows the target's greedy
continuation; ``wrong=True`` proposes anything else) and :class:`RandomDrafter` exist for tests and for
measuring the decoder's own overhead.
"""

from __future__ import annotations

from typing import Any

import torch

from specforge.inference.kv import (
    apply_slot_moves,
    contiguous_src,
    slot_moves,
    step_mask,
    valid_key_mask,
)
from specforge.inference.tree import NO_PROPOSAL


class Drafter:
    """Interface of a drafter (see module docstring)."""

    needs_aux = False  # whether commit() needs the target's aux hidden states

    def reset(self, batch_size: int) -> None:
        """Forget all state before decoding a new batch of ``batch_size`` rows."""

    def commit(self, tokens, aux, positions, valid) -> None:  # pragma: no cover - interface
        """Add accepted context. tokens/positions [B, T] int64, aux [B, T, 3*Ht] or None, valid [B, T] bool."""
        raise NotImplementedError

    def first(self, topk: int):  # pragma: no cover - interface
        """Top-k children of the root: ``(ids [B, k] target ids, logp [B, k])``."""
        raise NotImplementedError

    def expand(self, tokens, parent_rows, paths, depth: int, topk: int):  # pragma: no cover - interface
        """Top-k children of K frontier nodes: tokens/parent_rows [B, K], paths [B, K, depth] -> [B, K, k] x2."""
        raise NotImplementedError

    def select_rows(self, idx: torch.Tensor) -> None:
        """Keep only batch rows ``idx`` [B'] (int64)."""


class _SequenceTracker(Drafter):
    """Keeps every row's committed tokens as a Python list (for the lookup-style test drafters)."""

    def __init__(self, vocab_size: int, seed: int = 0):
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)
        self.seqs: list[dict[int, int]] = []

    def reset(self, batch_size: int) -> None:
        self.seqs = [{} for _ in range(batch_size)]

    def commit(self, tokens, aux, positions, valid) -> None:
        for b, (tok, pos, ok) in enumerate(zip(tokens.tolist(), positions.tolist(), valid.tolist())):
            for x, p, v in zip(tok, pos, ok):
                if v:
                    self.seqs[b][p + 1] = x  # slot at position p carries the token at index p + 1

    def select_rows(self, idx) -> None:
        self.seqs = [self.seqs[i] for i in idx.tolist()]

    def _next_index(self, b: int) -> int:
        return max(self.seqs[b]) + 1

    def _random_tokens(self, n: int, exclude: int | None) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            x = int(torch.randint(self.vocab_size, (1,), generator=self.gen))
            if x != exclude and x not in out:
                out.append(x)
        return out


class OracleDrafter(_SequenceTracker):
    """Proposes the target's own greedy continuation (``wrong=True``: never proposes it).

    references: per batch row, the full greedy sequence (prompt + continuation) as token ids. The right
    token gets log-prob 0, the other top-k children random tokens with log-probs -5, -6, ...
    """

    def __init__(self, references: list[list[int]], vocab_size: int, wrong: bool = False, seed: int = 0):
        super().__init__(vocab_size, seed)
        self.references = [list(r) for r in references]
        self.rows = list(range(len(references)))
        self.wrong = wrong

    def reset(self, batch_size: int) -> None:
        super().reset(batch_size)
        if batch_size != len(self.references):
            raise ValueError("OracleDrafter: batch size differs from the number of references")
        self.rows = list(range(batch_size))

    def select_rows(self, idx) -> None:
        super().select_rows(idx)
        self.rows = [self.rows[i] for i in idx.tolist()]

    def _propose(self, b: int, path: list[int], k: int) -> tuple[list[int], list[float]]:
        ref = self.references[self.rows[b]]
        n = self._next_index(b)
        on_track = all(ref[i] == x for i, x in self.seqs[b].items() if i < len(ref)) and \
            ref[n:n + len(path)] == path
        right = ref[n + len(path)] if on_track and n + len(path) < len(ref) else None
        if self.wrong:
            return self._random_tokens(k, right), [-5.0 - i for i in range(k)]
        if right is None:
            return self._random_tokens(k, None), [-5.0 - i for i in range(k)]
        return [right] + self._random_tokens(k - 1, right), [0.0] + [-5.0 - i for i in range(k - 1)]

    def first(self, topk: int):
        ids, lps = zip(*(self._propose(b, [], topk) for b in range(len(self.seqs))))
        return torch.tensor(ids), torch.tensor(lps)

    def expand(self, tokens, parent_rows, paths, depth: int, topk: int):
        res = [[self._propose(b, p, topk) for p in row] for b, row in enumerate(paths.tolist())]
        ids = torch.tensor([[r[0] for r in row] for row in res])
        lps = torch.tensor([[r[1] for r in row] for row in res])
        return ids, lps


class RandomDrafter(_SequenceTracker):
    """Proposes uniformly random tokens with random (sorted) log-probs; for greedy-equality tests."""

    def _rand(self, shape, k):
        ids = torch.randint(self.vocab_size, (*shape, k), generator=self.gen)
        lps = -torch.rand(*shape, k, generator=self.gen).sort(-1).values * 3
        return ids, lps

    def first(self, topk: int):
        return self._rand((len(self.seqs),), topk)

    def expand(self, tokens, parent_rows, paths, depth: int, topk: int):
        return self._rand(tuple(tokens.shape), topk)


class Eagle3Drafter(Drafter):
    """Drafts with an EAGLE-3 draft model (``specforge.eagle3.base.Eagle3DraftModel``).

    The draft keeps one KV cache for the committed context (ragged rows, see :mod:`specforge.inference.kv`)
    and, while a tree is drafted, a temporary cache of the tree's slots; tree queries attend to the valid
    context plus their own ancestors. A node's hidden input is its parent's pre-norm output (the draft
    feeds its own state forward when the target's is not known yet).
    """

    needs_aux = True

    def __init__(self, draft_model):
        self.model = draft_model
        d2t = getattr(draft_model, "d2t", None)
        self.d2t = d2t.long() if d2t is not None else None

    def reset(self, batch_size: int) -> None:
        # decoding state, set by commit(): Any because it is None until the first commit
        self.kv: Any = None  # (k, v) [B, KVH, S, D]
        self.lengths: Any = None  # [B] valid context slots per row
        self.last_pos: Any = None  # [B] position id of each row's last committed slot

    def _to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids if self.d2t is None else draft_ids + self.d2t[draft_ids]

    def _topk(self, hidden: torch.Tensor, k: int):
        logp = torch.log_softmax(self.model.compute_logits(hidden).float(), dim=-1)
        lp, ids = logp.topk(k, dim=-1)
        return self._to_target(ids), lp

    def commit(self, tokens, aux, positions, valid) -> None:
        b, t = tokens.shape
        dev = tokens.device
        if self.kv is None:
            self.lengths = torch.zeros(b, dtype=torch.long, device=dev)
        emb = self.model.embed_input_ids(tokens)
        hid = self.model.project_hidden_states(aux.to(emb.dtype))
        past_len = 0 if self.kv is None else self.kv[0].shape[2]
        j = torch.arange(t, device=dev)
        # New queries see the valid context, and earlier valid new slots (always their own slot).
        new = (j[None, :, None] >= j[None, None, :]) & valid[:, None, :]
        new = new | torch.eye(t, dtype=torch.bool, device=dev)[None]
        mask = step_mask(self.lengths, past_len, new)
        out, (k_new, v_new) = self.model.decode_step(emb, hid, positions, self.kv, mask)
        src, counts = contiguous_src(valid)
        k = k_new if self.kv is None else torch.cat([self.kv[0], k_new], 2)
        v = v_new if self.kv is None else torch.cat([self.kv[1], v_new], 2)
        moves = slot_moves(self.lengths, src, counts, k.shape[2] - t)
        self.kv = (apply_slot_moves(k, moves), apply_slot_moves(v, moves))
        self.lengths = self.lengths + counts
        last = src.gather(1, (counts - 1).clamp(min=0)[:, None])  # [B, 1] index of the last valid new slot
        self.last_hidden = out.gather(1, last[:, :, None].expand(b, 1, out.shape[-1]))  # [B, 1, H]
        self.last_pos = positions.gather(1, last)[:, 0]

    def first(self, topk: int):
        # Tree slots of the proposal being drafted: keys/values, ancestor mask, parent hidden states.
        self.tree_kv: Any = None
        self.tree_anc: Any = None
        self.prev_hidden = self.last_hidden
        ids, lp = self._topk(self.last_hidden[:, 0], topk)
        return ids, lp

    def expand(self, tokens, parent_rows, paths, depth: int, topk: int):
        b, kk = tokens.shape
        dev = tokens.device
        hidden = self.prev_hidden.gather(1, parent_rows[:, :, None].expand(b, kk, self.prev_hidden.shape[-1]))
        emb = self.model.embed_input_ids(tokens)
        pos = (self.last_pos + depth)[:, None].expand(b, kk)
        eye = torch.eye(kk, dtype=torch.bool, device=dev)[None].expand(b, kk, kk)
        if self.tree_anc is None:
            anc = eye
        else:
            inherited = self.tree_anc.gather(1, parent_rows[:, :, None].expand(b, kk, self.tree_anc.shape[2]))
            anc = torch.cat([inherited, eye], 2)
        past_k, past_v = self.kv
        if self.tree_kv is not None:
            past_k = torch.cat([past_k, self.tree_kv[0]], 2)
            past_v = torch.cat([past_v, self.tree_kv[1]], 2)
        ctx = self.kv[0].shape[2]
        # Context part: the row's valid slots; tree part: the node's ancestors and itself.
        mask = torch.cat([valid_key_mask(self.lengths, ctx)[:, None, :].expand(b, kk, ctx), anc], 2)
        out, (k_new, v_new) = self.model.decode_step(emb, hidden, pos, (past_k, past_v), mask)
        if self.tree_kv is None:
            self.tree_kv = (k_new, v_new)
        else:
            self.tree_kv = (torch.cat([self.tree_kv[0], k_new], 2), torch.cat([self.tree_kv[1], v_new], 2))
        self.tree_anc = anc
        self.prev_hidden = out
        return self._topk(out, topk)

    def select_rows(self, idx) -> None:
        self.kv = (self.kv[0][idx], self.kv[1][idx])
        self.lengths = self.lengths[idx]
        self.last_hidden = self.last_hidden[idx]
        self.last_pos = self.last_pos[idx]


class LookupDrafter(Drafter):
    """Prompt lookup first, a draft model otherwise (``eagle3+lookup`` in ``bench``; ``--hybrid-lookup``).

    When a row's context ends with an n-gram (``max_ngram`` down to ``min_ngram`` tokens) that occurred
    earlier in that row's prompt or output, the continuation of its most recent earlier occurrence is
    proposed (log-prob 0: it outranks every drafted node); otherwise ``fallback`` drafts as usual. When
    every row of a chain (``topk = 1``) has a match the fallback does not run at all, so those steps cost
    only the verification. The fallback's commits are buffered and sent in one call when it next drafts
    (or when rows leave the batch), so lookup steps do not pay for them either. ``fallback=None`` is plain
    prompt lookup inside the built-in decoder.
    """

    JUNK_LOGP = 10 * NO_PROPOSAL  # filler children where neither lookup nor the fallback proposes one

    def __init__(self, fallback: Drafter | None, max_ngram: int = 3, min_ngram: int = 2, max_tokens: int = 16):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"LookupDrafter: need 1 <= min_ngram <= max_ngram (got {min_ngram}, {max_ngram})")
        self.fallback = fallback
        self.needs_aux = fallback is not None and fallback.needs_aux
        self.max_ngram, self.min_ngram, self.max_tokens = max_ngram, min_ngram, max_tokens
        self.lookup_steps = 0  # drafting steps where every row used lookup (the fallback did not run)
        self.model_steps = 0
        self.lookup_rows = 0  # (row, step) pairs whose proposal came from lookup
        self.seqs: list[list[int]] = []  # every row's committed tokens (the prompt's first one excepted)
        self.pending: list[tuple] = []  # commits not yet sent to the fallback
        self.props: list[list[int]] = []  # this step's lookup continuation per row ([] = none)
        self.model_ran = False

    def reset(self, batch_size: int) -> None:
        self.seqs = [[] for _ in range(batch_size)]
        self.pending, self.props, self.model_ran = [], [], False
        if self.fallback is not None:
            self.fallback.reset(batch_size)

    def commit(self, tokens, aux, positions, valid) -> None:
        for seq, tok, ok in zip(self.seqs, tokens.tolist(), valid.tolist()):
            seq.extend(x for x, v in zip(tok, ok) if v)
        if self.fallback is not None:
            self.pending.append((tokens, aux, positions, valid))

    def _flush(self) -> None:
        """Send the buffered commits to the fallback as one (slot order and validity kept)."""
        if self.fallback is None or not self.pending:
            return
        parts = list(zip(*self.pending))
        aux = None if parts[1][0] is None else torch.cat(parts[1], 1)
        self.fallback.commit(torch.cat(parts[0], 1), aux, torch.cat(parts[2], 1), torch.cat(parts[3], 1))
        self.pending = []

    def lookup(self, seq: list[int]) -> list[int]:
        """Continuation of the most recent earlier occurrence of seq's last n-gram (longest n first), or []."""
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            tail, last = seq[-n:], seq[-1]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start + n - 1] == last and seq[start:start + n] == tail:
                    return seq[start + n:start + n + self.max_tokens]
        return []

    def _fill(self, ids, lp, depth: int, paths) -> tuple[torch.Tensor, torch.Tensor]:
        """Put each row's lookup token at ``depth`` under the node that follows its lookup path."""
        for b, prop in enumerate(self.props):
            if len(prop) <= depth:
                continue
            for j in range(ids.shape[1]):
                if paths is not None and paths[b][j] != prop[:depth]:
                    continue
                row = ids[b, j].tolist()
                slot = row.index(prop[depth]) if prop[depth] in row else len(row) - 1
                ids[b, j, slot], lp[b, j, slot] = prop[depth], 0.0
        return ids, lp

    def _children(self, shape, topk: int, dev):
        ids = torch.zeros(*shape, topk, dtype=torch.long, device=dev)
        return ids, torch.full((*shape, topk), self.JUNK_LOGP, device=dev)

    def first(self, topk: int):
        self.props = [self.lookup(seq) for seq in self.seqs]
        self.lookup_rows += sum(1 for p in self.props if p)
        self.model_ran = self.fallback is not None and (topk > 1 or not all(self.props))
        if self.model_ran:
            self._flush()
            assert self.fallback is not None
            ids, lp = self.fallback.first(topk)
            ids, lp = ids.clone(), lp.float().clone()
            self.model_steps += 1
        else:
            ids, lp = self._children((len(self.seqs),), topk, torch.device("cpu"))
            self.lookup_steps += 1
        ids, lp = self._fill(ids[:, None], lp[:, None], 0, None)
        return ids[:, 0], lp[:, 0]

    def expand(self, tokens, parent_rows, paths, depth: int, topk: int):
        if self.model_ran:
            assert self.fallback is not None
            ids, lp = self.fallback.expand(tokens, parent_rows, paths, depth, topk)
            ids, lp = ids.clone(), lp.float().clone()
        else:
            ids, lp = self._children(tuple(tokens.shape), topk, tokens.device)
        return self._fill(ids, lp, depth, paths.tolist())

    def select_rows(self, idx) -> None:
        self._flush()
        self.seqs = [self.seqs[i] for i in idx.tolist()]
        if self.fallback is not None:
            self.fallback.select_rows(idx)
