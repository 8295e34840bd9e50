"""Decoding methods the benchmark compares: the built-in speculative decoder and the HF baselines.

Every method exposes ``name``, ``label``, ``batch_size``, ``max_new_tokens`` and
``generate(prompts: list[list[int]]) -> (new_tokens per row, DecodeStats)``. Baselines run through
transformers' own ``generate``: vanilla greedy (or sampling), prompt-lookup decoding
(``prompt_lookup_num_tokens``) and assisted generation (``assistant_model``). The last two are batch-1
only in transformers, so they always run one prompt at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from specforge.inference.decoder import (
    DecodeStats,
    SpecConfig,
    SpeculativeDecoder,
    _sync,
)
from specforge.inference.drafters import Drafter, LookupDrafter


def truncate_at_eos(tokens: list[int], eos: set[int], pad: int | None) -> list[int]:
    """Generated ids up to and including the first EOS (HF pads finished rows afterwards)."""
    for i, x in enumerate(tokens):
        if x in eos:
            return tokens[: i + 1]
    return tokens


class HFGenerateMethod:
    """``target.generate`` with left padding; ``extra`` adds e.g. ``prompt_lookup_num_tokens``."""

    def __init__(self, name: str, label: str, target, batch_size: int, max_new_tokens: int, temperature: float,
                 eos: set[int], pad_id: int, extra: dict | None = None):
        self.name, self.label, self.target = name, label, target
        self.batch_size, self.max_new_tokens, self.temperature = batch_size, max_new_tokens, temperature
        self.eos, self.pad_id, self.extra = eos, pad_id, dict(extra or {})
        self.device = next(target.parameters()).device
        self.config = {"batch_size": batch_size, "num_steps": 0, "topk": 0, "num_verify_tokens": 0}

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], DecodeStats]:
        """Left-padded batched HF generation. Returns new tokens per row and wall-clock stats."""
        pmax = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), pmax), self.pad_id, dtype=torch.long)
        am = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, pmax - len(p):] = torch.tensor(p)
            am[i, pmax - len(p):] = 1
        sample = self.temperature > 0
        kw = dict(max_new_tokens=self.max_new_tokens, do_sample=sample, pad_token_id=self.pad_id,
                  eos_token_id=sorted(self.eos) or None, **self.extra)
        if sample:
            kw.update(temperature=self.temperature, top_k=0, top_p=1.0)
        else:  # silence "temperature is set but do_sample=False" from generation configs with defaults
            kw.update(temperature=None, top_k=None, top_p=None)
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.target.generate(input_ids=ids.to(self.device), attention_mask=am.to(self.device), **kw)
        _sync(self.device)
        wall = time.perf_counter() - t0
        outs = [truncate_at_eos(row[pmax:], self.eos, self.pad_id) for row in out.tolist()]
        st = DecodeStats(new_tokens=sum(len(o) for o in outs), prompt_tokens=sum(map(len, prompts)), wall_s=wall)
        return outs, st


class SpecMethod:
    """The built-in speculative decoder for one ``batch,steps,topk,tokens`` config.

    make_drafter(prompts) builds a fresh drafter for a batch (None for steps 0); ``name`` is the method's
    name in the records (``eagle3``, or ``eagle3+lookup`` for :class:`LookupDrafter` around the draft).
    """

    def __init__(self, target, make_drafter: Callable[[list[list[int]]], Drafter | None], aux_ids,
                 batch_size: int, cfg: SpecConfig, label: str, name: str = "eagle3"):
        self.name = name
        self.target, self.make_drafter, self.aux_ids = target, make_drafter, aux_ids
        self.batch_size, self.cfg, self.label = batch_size, cfg, label
        self.config = {"batch_size": batch_size, "num_steps": cfg.num_steps, "topk": cfg.topk,
                       "num_verify_tokens": cfg.num_verify_tokens}

    @property
    def max_new_tokens(self) -> int:
        return self.cfg.max_new_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, n: int) -> None:
        self.cfg.max_new_tokens = n

    def generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], DecodeStats]:
        """Speculatively decode one batch; stats include τ and per-position acceptance."""
        drafter = self.make_drafter(prompts) if self.cfg.num_steps > 0 else None
        outs, st = SpeculativeDecoder(self.target, drafter, self.cfg, self.aux_ids).generate(prompts)
        if isinstance(drafter, LookupDrafter):
            st.lookup_steps = drafter.lookup_steps
        return outs, st


class ShadowDrafter(Drafter):
    """Proposes ``primary``'s tokens but also runs ``shadow`` on every call, paying its compute.

    With an oracle as primary and a real EAGLE-3 draft as shadow this measures the decoder at the ideal
    acceptance with a real draft's cost (how close the speed-up gets to τ·t_target/(t_verify + k·t_draft)).
    """

    def __init__(self, primary: Drafter, shadow: Drafter):
        self.primary, self.shadow = primary, shadow
        self.needs_aux = primary.needs_aux or shadow.needs_aux

    def reset(self, batch_size: int) -> None:
        self.primary.reset(batch_size)
        self.shadow.reset(batch_size)

    def commit(self, tokens, aux, positions, valid) -> None:
        self.primary.commit(tokens, aux, positions, valid)
        self.shadow.commit(tokens, aux, positions, valid)

    def first(self, topk: int):
        self.shadow.first(topk)
        return self.primary.first(topk)

    def expand(self, tokens, parent_rows, paths, depth: int, topk: int):
        self.shadow.expand(tokens, parent_rows, paths, depth, topk)
        return self.primary.expand(tokens, parent_rows, paths, depth, topk)

    def select_rows(self, idx) -> None:
        self.primary.select_rows(idx)
        self.shadow.select_rows(idx)
