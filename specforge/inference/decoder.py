"""The built-in speculative decoder: draft a chain or tree, verify it in one target forward, roll back.

One decoding step for a batch of B rows (each row's target cache holds every token but the last one):

1. the drafter proposes a tree (EAGLE-2: ``num_steps`` levels, ``topk`` children per expanded node, the
   ``num_verify_tokens - 1`` best nodes by cumulative draft log-prob; chains are ``topk = 1``);
2. the target runs once over ``[last token, tree nodes]`` with a tree attention mask (each node sees the
   row's valid cache, its ancestors and itself) and tree position ids (``length + depth``);
3. :func:`specforge.inference.sampling.verify_tree` picks the accepted path and a bonus token;
4. the accepted nodes' target keys/values are moved next to the valid prefix, the rest is cropped
   (:mod:`specforge.inference.kv`), and the drafter commits the accepted tokens with their aux states.

Rows finish independently (EOS / max new tokens) and leave the batch, so every forward is one batched call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from specforge.errors import SpecforgeError
from specforge.inference.drafters import Drafter
from specforge.inference.kv import (
    additive_mask,
    apply_slot_moves,
    slot_moves,
    step_mask,
)
from specforge.inference.sampling import greedy_tokens, verify_tree
from specforge.inference.tree import (
    NO_PROPOSAL,
    DraftTree,
    ancestor_mask,
    select_tree,
    tree_position_ids,
)
from specforge.modeling.compat import cache_kwargs


@dataclass
class SpecConfig:
    """``batch_size,num_steps,topk,num_verify_tokens`` of the seed's ``--config-list`` plus sampling.

    ``num_verify_tokens`` counts the root like SGLang's ``speculative_num_draft_tokens`` (chain 3/1/4 verifies
    the last token + 3 drafts). ``num_steps = 0`` decodes without speculation.
    """

    num_steps: int = 3
    topk: int = 1
    num_verify_tokens: int = 4
    temperature: float = 0.0
    max_new_tokens: int = 256
    eos_token_ids: tuple[int, ...] = ()
    seed: int = 0
    # Dynamic draft depth: stop expanding once every frontier node's cumulative draft probability is below
    # this, and verify no node below it (0 = always draft num_steps levels and verify num_verify_tokens).
    min_draft_prob: float = 0.0

    def __post_init__(self):
        if self.num_steps < 0 or min(self.topk, self.num_verify_tokens) < (1 if self.num_steps else 0):
            raise SpecforgeError(
                f"bad speculative config steps={self.num_steps} topk={self.topk} "
                f"tokens={self.num_verify_tokens}: need steps >= 0, topk >= 1, tokens >= 1 (any with steps 0)."
            )
        if not 0.0 <= self.min_draft_prob < 1.0:
            raise SpecforgeError(f"min draft probability must be in [0, 1) (got {self.min_draft_prob}).")

    @property
    def score_floor(self) -> float:
        """Cumulative log-prob at or below which a drafted node is neither expanded nor verified."""
        return max(NO_PROPOSAL, math.log(self.min_draft_prob)) if self.min_draft_prob > 0 else NO_PROPOSAL


@dataclass
class DecodeStats:
    """What one :meth:`SpeculativeDecoder.generate` call measured.

    accept_lengths: per verification step and row, tokens emitted by that verification (accepted drafts + 1
    bonus, cut at max new tokens / EOS: only tokens that reach the output count) — τ is their mean.
    accepted_at[i]: how many (row, step) verifications accepted at least i drafts
    (accepted_at[0] = verifications).
    """

    num_steps: int = 0
    accept_lengths: list[int] = field(default_factory=list)
    new_tokens: int = 0
    prompt_tokens: int = 0
    verify_calls: int = 0  # batched target forwards after the prefill
    wall_s: float = 0.0
    target_s: float = 0.0
    draft_s: float = 0.0
    prefill_s: float = 0.0
    verify_s: float = 0.0  # target time after the prefill (the verification forwards)
    draft_step_s: float = 0.0  # draft time after the prompt was committed (drafting + commits)
    lookup_steps: int = 0  # verifications drafted by prompt lookup alone (LookupDrafter; the draft model idle)

    @property
    def tau(self) -> float:
        """Mean acceptance length τ (tokens per verification incl. the bonus token)."""
        return sum(self.accept_lengths) / max(1, len(self.accept_lengths))

    def accepted_at(self) -> list[int]:
        """accepted_at[i] = verifications that accepted >= i drafts, i = 0..num_steps."""
        return [sum(1 for a in self.accept_lengths if a - 1 >= i) for i in range(self.num_steps + 1)]

    def acceptance_rates(self) -> list[float]:
        """Per draft position i = 1..num_steps: P(accept i | accepted i-1) over all verifications."""
        at = self.accepted_at()
        return [at[i] / at[i - 1] if at[i - 1] else 0.0 for i in range(1, len(at))]

    def histogram(self) -> list[int]:
        """hist[j] = verifications that emitted j + 1 tokens, j = 0..num_steps."""
        h = [0] * (self.num_steps + 1)
        for a in self.accept_lengths:
            h[min(a, self.num_steps + 1) - 1] += 1
        return h

    @property
    def tokens_per_s(self) -> float:
        """New tokens per wall-clock second (the whole batch, prefill included)."""
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def merge(self, other: DecodeStats) -> None:
        """Add another run's counts and times (same config)."""
        self.num_steps = max(self.num_steps, other.num_steps)
        self.accept_lengths += other.accept_lengths
        for name in ("new_tokens", "prompt_tokens", "verify_calls", "wall_s", "target_s", "draft_s", "prefill_s",
                     "verify_s", "draft_step_s", "lookup_steps"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SpeculativeDecoder:
    """Speculative decoding of an HF causal LM (with a DynamicCache) using a :class:`Drafter`.

    target: e.g. ``LlamaForCausalLM`` in eval mode; aux_layer_ids: indices into HF ``hidden_states`` whose
    concatenation the drafter needs (None when the drafter ignores aux states).
    """

    def __init__(self, target, drafter: Drafter | None, config: SpecConfig, aux_layer_ids=None):
        self.target = target
        self.drafter = drafter
        self.cfg = config
        self.aux_ids = list(aux_layer_ids) if aux_layer_ids is not None else None
        if config.num_steps > 0 and drafter is None:
            raise SpecforgeError("num_steps > 0 needs a draft model; pass one or use steps 0.")
        if drafter is not None and drafter.needs_aux and not self.aux_ids:
            raise SpecforgeError("this drafter needs the target's aux hidden states: pass aux_layer_ids.")
        self.device = next(target.parameters()).device
        self.dtype = next(target.parameters()).dtype

    def _drafter(self) -> Drafter:
        """The drafter (only called on the speculative paths, where __init__ made sure there is one)."""
        assert self.drafter is not None
        return self.drafter

    # ---- target ---------------------------------------------------------------------------------------

    def _target(self, ids, pos, mask, cache, want_aux: bool, logits_to_keep: int = 0):
        """One target forward. ids/pos [B, T], mask bool [B, T, S+T] or None (causal) -> (logits [B, T', V], aux [B, T, A])."""
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.target(
            input_ids=ids, position_ids=pos, attention_mask=None if mask is None else additive_mask(mask, self.dtype),
            **cache_kwargs(self.target, cache), use_cache=True, output_hidden_states=want_aux,
            logits_to_keep=logits_to_keep,
        )
        aux = torch.cat([out.hidden_states[i] for i in self.aux_ids or ()], -1) if want_aux else None
        _sync(self.device)
        self._stats.target_s += time.perf_counter() - t0
        return out.logits, aux

    def _compact_target(self, cache, lengths, src, counts) -> None:
        moves = None  # one plan for every layer (all layers hold the same slots)
        for layer in cache.layers:
            if type(layer).__name__ != "DynamicLayer":
                raise SpecforgeError(
                    f"the built-in decoder supports full-attention KV caches only (got {type(layer).__name__})."
                )
            if moves is None:
                moves = slot_moves(lengths, src, counts, layer.keys.shape[2] - src.shape[1])
            layer.keys = apply_slot_moves(layer.keys, moves)
            layer.values = apply_slot_moves(layer.values, moves)

    # ---- drafting -------------------------------------------------------------------------------------

    def _draft(self, root_tokens: torch.Tensor) -> DraftTree:
        """Draft one tree per row (EAGLE-2 expansion + re-ranking). root_tokens [B] -> DraftTree."""
        cfg, dr = self.cfg, self._drafter()
        _sync(self.device)
        t0 = time.perf_counter()
        b = root_tokens.shape[0]
        dev = root_tokens.device
        ids, lp = dr.first(cfg.topk)  # [B, k]
        ids, lp = ids.to(dev), lp.to(dev).float()
        k = ids.shape[1]
        c_tok, c_par, c_dep, c_sc = [ids], [torch.full_like(ids, -1)], [torch.ones_like(ids)], [lp]
        front_idx = torch.arange(k, device=dev).expand(b, k)  # candidate index of each frontier node
        front_tok, front_sc, paths = ids, lp, ids[:, :, None]
        front_par = torch.zeros(b, k, dtype=torch.long, device=dev)
        n_cand = k
        floor = cfg.score_floor
        for depth in range(1, cfg.num_steps):
            if bool((front_sc <= floor).all()):
                break  # nothing left worth drafting from (dynamic depth / no proposal)
            ids, lp = dr.expand(front_tok, front_par, paths, depth, cfg.topk)  # [B, K, k]
            ids, lp = ids.to(dev), lp.to(dev).float()
            kk = front_tok.shape[1]
            cum = (front_sc[:, :, None] + lp).reshape(b, -1)
            c_tok.append(ids.reshape(b, -1))
            c_par.append(front_idx[:, :, None].expand(b, kk, cfg.topk).reshape(b, -1))
            c_dep.append(torch.full_like(cum, depth + 1, dtype=torch.long))
            c_sc.append(cum)
            # The next frontier: the topk best children by cumulative score (EAGLE-2).
            top = cum.topk(min(cfg.topk, cum.shape[1]), dim=1).indices
            front_par = top // cfg.topk
            front_tok = ids.reshape(b, -1).gather(1, top)
            front_sc = cum.gather(1, top)
            paths = torch.cat([paths.gather(1, front_par[:, :, None].expand(-1, -1, paths.shape[2])),
                               front_tok[:, :, None]], 2)
            front_idx = n_cand + top
            n_cand += cum.shape[1]
        scores = torch.cat(c_sc, 1)
        live = int((scores > floor).sum(1).max())  # verify only nodes above the floor (the best row's count)
        tree = select_tree(torch.cat(c_tok, 1), torch.cat(c_par, 1), torch.cat(c_dep, 1),
                           scores, root_tokens, min(cfg.num_verify_tokens - 1, live))
        _sync(self.device)
        self._stats.draft_s += time.perf_counter() - t0
        return tree

    def _commit(self, tokens, aux, positions, valid) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        self._drafter().commit(tokens, aux, positions, valid)
        _sync(self.device)
        self._stats.draft_s += time.perf_counter() - t0

    # ---- main loop ------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], DecodeStats]:
        """Decode a batch of prompts (token id lists). Returns the new tokens per row and the run's stats.

        Generated tokens stop after the first EOS (included) or at ``max_new_tokens``.
        """
        from transformers import DynamicCache

        cfg = self.cfg
        if not prompts or any(len(p) == 0 for p in prompts):
            raise SpecforgeError("every prompt needs at least one token.")
        self._stats = st = DecodeStats(num_steps=cfg.num_steps)
        gen = torch.Generator().manual_seed(cfg.seed)
        dev = self.device
        b = len(prompts)
        eos = set(cfg.eos_token_ids)
        speculate = cfg.num_steps > 0 and cfg.num_verify_tokens > 1
        want_aux = speculate and self._drafter().needs_aux
        _sync(dev)
        t_start = time.perf_counter()

        # Prefill, left-padded so that the last column is every row's last prompt token.
        plen = torch.tensor([len(p) for p in prompts], device=dev)
        pmax = int(plen.max())
        pad = pmax - plen
        ids = torch.zeros(b, pmax, dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, pmax - len(p):] = torch.tensor(p, device=dev)
        j = torch.arange(pmax, device=dev)
        slot_ok = j[None, :] >= pad[:, None]  # [B, P]
        causal = (j[None, :, None] >= j[None, None, :]) & slot_ok[:, None, :]
        causal = causal | torch.eye(pmax, dtype=torch.bool, device=dev)[None]  # pad rows see themselves
        pos = (j[None, :] - pad[:, None]).clamp(min=0)
        cache = DynamicCache(config=self.target.config)
        zero = torch.zeros(b, dtype=torch.long, device=dev)
        logits, aux = self._target(ids, pos, causal, cache, want_aux, logits_to_keep=1)
        root = self._pick(logits[:, -1], gen)  # [B] first new token
        # Move each row's prompt slots to [0, P) so the valid prefix of every row starts at slot 0.
        src = (j[None, :] + pad[:, None]).clamp(max=pmax - 1)
        self._compact_target(cache, zero, src, plen)
        lengths = plen.clone()  # target cache slots per row = tokens so far - 1
        st.prompt_tokens = int(plen.sum())
        if speculate:
            self._drafter().reset(b)
            nxt = torch.cat([ids[:, 1:], root[:, None]], 1)  # slot t carries token t + 1
            self._commit(nxt, aux, pos, slot_ok)
        _sync(dev)
        st.prefill_s = time.perf_counter() - t_start
        prefill_target_s, prefill_draft_s = st.target_s, st.draft_s

        outputs: list[list[int]] = [[] for _ in range(b)]
        rows = list(range(b))  # original index of each active batch row
        root_list = root.tolist()
        done = []
        for r in range(b):
            outputs[r].append(root_list[r])
            done.append(root_list[r] in eos or cfg.max_new_tokens <= 1)
        while True:
            keep = [i for i, r in enumerate(rows) if not done[r]]
            if not keep:
                break
            if len(keep) < len(rows):
                idx = torch.tensor(keep, device=dev)
                for layer in cache.layers:
                    layer.batch_select_indices(idx)  # type: ignore[union-attr]  # DynamicCache layers have it
                lengths, root = lengths[idx], root[idx]
                if speculate:
                    self._drafter().select_rows(idx)
                rows = [rows[i] for i in keep]
            nb = len(rows)
            if speculate:
                tree = self._draft(root)
            else:
                zeros = torch.zeros(nb, 1, dtype=torch.long, device=dev)
                tree = DraftTree(root[:, None], zeros - 1, zeros, zeros.float())
            n = tree.size
            past = cache.get_seq_length()
            chain = bool((tree.parents == torch.arange(-1, n - 1, device=tree.parents.device)).all())
            if chain and bool((lengths == past).all()):
                # No stale slots and a causal chain: let transformers build its own causal mask (for one
                # query it needs none, and SDPA then runs GQA natively instead of repeating the KV heads).
                mask = None
            else:
                mask = step_mask(lengths, past, ancestor_mask(tree.parents.to(dev)))
            pos = tree_position_ids(tree.depths.to(dev), lengths)
            logits, aux = self._target(tree.tokens.to(dev), pos, mask, cache, want_aux)
            paths, bonus = verify_tree(tree, logits, cfg.temperature, gen)
            st.verify_calls += 1
            counts = torch.tensor([len(p) for p in paths], device=dev)
            src = torch.tensor([p + [0] * (n - len(p)) for p in paths], device=dev)  # [B, N]
            self._compact_target(cache, lengths, src, counts)
            tok_list = tree.tokens.tolist()
            for i, r in enumerate(rows):
                new = [tok_list[i][c] for c in paths[i][1:]] + [bonus[i]]
                room = cfg.max_new_tokens - len(outputs[r])
                new = new[:room]
                for x_i, x in enumerate(new):
                    if x in eos:
                        new = new[: x_i + 1]
                        break
                st.accept_lengths.append(len(new))  # only tokens emitted (after the max-new-tokens/EOS cut)
                outputs[r] += new
                done[r] = len(outputs[r]) >= cfg.max_new_tokens or (bool(new) and new[-1] in eos)
            if speculate and not all(done[r] for r in rows):
                # Commit slot t = old length + j carries the token after it: accepted drafts then the bonus.
                nxt = torch.zeros(nb, n, dtype=torch.long, device=dev)
                for i, p in enumerate(paths):
                    seq = [tok_list[i][c] for c in p[1:]] + [bonus[i]]
                    nxt[i, : len(seq)] = torch.tensor(seq, device=dev)
                aux_kept = aux.gather(1, src[:, :, None].expand(-1, -1, aux.shape[-1])) if aux is not None else None
                cpos = lengths[:, None] + torch.arange(n, device=dev)[None, :]
                valid = torch.arange(n, device=dev)[None, :] < counts[:, None]
                self._commit(nxt, aux_kept, cpos, valid)
            lengths = lengths + counts
            root = torch.tensor(bonus, device=dev)
        _sync(dev)
        st.wall_s = time.perf_counter() - t_start
        st.verify_s, st.draft_step_s = st.target_s - prefill_target_s, st.draft_s - prefill_draft_s
        st.new_tokens = sum(len(o) for o in outputs)
        return outputs, st

    def _pick(self, logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Greedy or sampled token from logits [B, V] -> [B]."""
        if self.cfg.temperature <= 0:
            return greedy_tokens(logits)
        probs = torch.softmax(logits.float() / self.cfg.temperature, -1).cpu()
        return torch.multinomial(probs, 1, generator=gen)[:, 0].to(logits.device)
