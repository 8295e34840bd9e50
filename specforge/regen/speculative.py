"""Serving through the built-in speculative decoder (`specforge serve --speculative-draft-model-path`).

Requests that arrive together are decoded as one batch of up to ``batch_size`` rows by
:class:`specforge.inference.SpeculativeDecoder` (chain or EAGLE-2 tree, one-pass verification). A batch runs
to completion before the next starts, so requests are grouped by temperature and decoded for the largest
``max_tokens`` of the group, each answer then cut to its own limit; at temperature 0 every answer equals the
plain target's greedy answer (the decoder's guarantee), so a cut answer is the shorter greedy answer.
"""

from __future__ import annotations

import logging
import queue

from specforge.errors import SpecforgeError
from specforge.regen.embedded import ThreadedGenerator, load_generation_target
from specforge.regen.engine import GenRequest

logger = logging.getLogger(__name__)


def parse_spec_config(text: str) -> tuple[int, int, int, int]:
    """``batch,steps,topk,tokens`` (the bench's --config-list format) -> 4 ints."""
    from specforge.bench.runner import parse_config

    return parse_config(text)


class SpeculativeGenerator(ThreadedGenerator):
    """Batches waiting requests through an EAGLE-3 draft + the target's one-pass verification."""

    def __init__(self, model, tokenizer, draft_model, aux_layer_ids, config=(4, 3, 1, 4), name: str = "target",
                 hybrid_lookup: bool = False, min_draft_prob: float = 0.0):
        super().__init__(model, tokenizer, name)
        self.min_draft_prob = min_draft_prob
        self.draft_model, self.aux_layer_ids = draft_model, list(aux_layer_ids)
        self.hybrid_lookup = hybrid_lookup  # prompt lookup first, the draft where the context has no match
        self.batch_size, self.num_steps, self.topk, self.num_verify_tokens = config
        self._thread.start()

    @classmethod
    def load(cls, model_name: str, draft_path: str, config: str = "4,3,1,4", device: str = "auto",
             dtype: str = "auto", hybrid_lookup: bool = False, min_draft_prob: float = 0.0):
        """Load target and draft (any layout :func:`specforge.export.load_draft` reads)."""
        import os

        from specforge.export import load_draft
        from specforge.modeling.auto import check_draft_target_compat
        from specforge.modeling.target import aux_layer_ids

        cfg = parse_spec_config(config)
        if not os.path.isdir(draft_path):
            raise SpecforgeError(f"--speculative-draft-model-path {draft_path}: not a directory; pass a draft "
                                 "checkpoint (OUTPUT_DIR/epoch_<i>) or an export dir.")
        model, tok = load_generation_target(model_name, device, dtype)
        p = next(model.parameters())
        draft, draft_aux = load_draft(draft_path)
        check_draft_target_compat(draft.config, model.config)
        draft.load_embedding(model.get_input_embeddings().weight)
        draft.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        aux = list(draft_aux) if draft_aux else aux_layer_ids(text_cfg.num_hidden_layers, None)
        logger.info("speculative decoding with %s%s, config %s", draft_path, " + prompt lookup" if hybrid_lookup else "",
                    config)
        return cls(model, tok, draft, aux, cfg, name=model_name, hybrid_lookup=hybrid_lookup,
                   min_draft_prob=min_draft_prob)

    def _loop(self) -> None:
        import torch

        from specforge.inference import SpecConfig, SpeculativeDecoder
        from specforge.inference.drafters import Drafter, Eagle3Drafter, LookupDrafter

        waiting: list[GenRequest] = []
        while not self._stop:
            try:
                waiting.append(self._inbox.get(timeout=0.05))
                while True:
                    waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            waiting = [r for r in waiting if not self._drop(r)]
            if not waiting:
                continue
            temp = waiting[0].temperature
            batch = [r for r in waiting if r.temperature == temp][: self.batch_size]
            waiting = [r for r in waiting if all(r is not b for b in batch)]
            cfg = SpecConfig(num_steps=self.num_steps, topk=self.topk, num_verify_tokens=self.num_verify_tokens,
                             temperature=temp, max_new_tokens=max(r.max_new_tokens for r in batch),
                             eos_token_ids=tuple(self.eos), seed=batch[0].seed, min_draft_prob=self.min_draft_prob)
            drafter: Drafter = Eagle3Drafter(self.draft_model)
            if self.hybrid_lookup:
                drafter = LookupDrafter(drafter)
            dec = SpeculativeDecoder(self.model, drafter, cfg, self.aux_layer_ids)
            with torch.no_grad():
                outs, _ = dec.generate([r.prompt for r in batch])
            for r, out in zip(batch, outs):
                out = out[: r.max_new_tokens]
                r.output = list(out)
                r.finish_reason = "stop" if out and out[-1] in self.eos else "length"
                if r.on_token:
                    r.on_token(r, list(out))
                if r.on_done:
                    r.on_done(r)

    def _drop(self, r: GenRequest) -> bool:
        """Finish cancelled or impossible requests without decoding them."""
        why = None
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if r.cancelled:
            r.finish_reason = "cancelled"
        elif not r.prompt:
            why = "empty prompt"
        elif limit and len(r.prompt) + r.max_new_tokens > limit:
            why = f"prompt of {len(r.prompt)} tokens + max_tokens {r.max_new_tokens} exceeds the context of {limit}"
        else:
            return False
        if why:
            r.finish_reason, r.error = "error", why
        if r.on_done:
            r.on_done(r)
        return True
