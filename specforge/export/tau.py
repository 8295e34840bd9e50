"""The end-to-end check of ``validate``: a short greedy decode with the built-in decoder must give τ > 1.

Everything structural can be right and the draft still useless (untrained head, wrong target, layer ids
shifted by one): only decoding shows it. τ counts tokens per target verification including the bonus
token, so a draft that is never accepted gives exactly 1.0.
"""

from __future__ import annotations

import logging

from specforge.errors import SpecforgeError
from specforge.export.report import FAIL, PASS, SKIP, Check

logger = logging.getLogger(__name__)

PROMPTS = (
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three prime numbers and say why they are prime.",
)


def _prompt_ids(target_model_path: str | None, vocab_size: int, n: int) -> tuple[list[list[int]], tuple[int, ...]]:
    """Chat-formatted prompt token ids and EOS ids; random ids when the target ships no tokenizer."""
    import torch

    try:
        from specforge.modeling.loading import load_tokenizer

        if target_model_path is None:
            raise KeyError("no target tokenizer")
        tok = load_tokenizer(target_model_path)
        out = []
        for p in PROMPTS[:n]:
            if getattr(tok, "chat_template", None):
                ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                              tokenize=True)
                ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            else:
                ids = tok(p)["input_ids"]
            out.append([int(i) for i in ids])
        eos = tok.eos_token_id
        return out, (() if eos is None else (int(eos),))
    except (SpecforgeError, OSError, ValueError, TypeError, KeyError):
        gen = torch.Generator().manual_seed(0)
        return [torch.randint(vocab_size, (12,), generator=gen).tolist() for _ in range(n)], ()


def measure_tau(source, target_model, target_model_path: str | None, device: str = "cpu",
                num_steps: int = 4, max_new_tokens: int = 32, num_prompts: int = 2) -> float:
    """Greedy chain decode (``num_steps``/1/``num_steps+1``) of a few prompts; returns the mean τ."""
    import torch

    from specforge.export.roundtrip import aux_ids_for, build_model
    from specforge.inference.decoder import SpecConfig, SpeculativeDecoder
    from specforge.inference.drafters import Eagle3Drafter

    draft = build_model(source)
    draft.load_embedding(target_model.get_input_embeddings().weight.detach())
    param = next(target_model.parameters())
    draft = draft.to(device=param.device, dtype=param.dtype).eval()
    prompts, eos = _prompt_ids(target_model_path, int(target_model.config.vocab_size), num_prompts)
    cfg = SpecConfig(num_steps=num_steps, topk=1, num_verify_tokens=num_steps + 1, temperature=0.0,
                     max_new_tokens=max_new_tokens, eos_token_ids=eos)
    aux = aux_ids_for(source, int(target_model.config.num_hidden_layers))
    dec = SpeculativeDecoder(target_model, Eagle3Drafter(draft), cfg, aux_layer_ids=aux)
    with torch.no_grad():
        _, stats = dec.generate(prompts)
    return stats.tau


def check_tau(source, target_model, target_model_path: str | None, device: str = "cpu",
              min_tau: float = 1.0, **kwargs) -> Check:
    """The τ check as a report line (skipped without a target or without the decoder)."""
    name = "greedy decode τ"
    if target_model is None:
        return Check(name, SKIP, "skipped: no --target-model-path, τ not measured")
    try:
        import specforge.inference.decoder
        import specforge.inference.drafters  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the decoder package being present
        return Check(name, SKIP, f"skipped: decoder unavailable ({e})")
    try:
        tau = measure_tau(source, target_model, target_model_path, device, **kwargs)
    except ImportError as e:  # pragma: no cover - model package missing
        return Check(name, SKIP, f"skipped: draft model class unavailable ({e})")
    if tau > min_tau:
        return Check(name, PASS, f"τ = {tau:.2f} (greedy chain decode, {kwargs.get('num_steps', 4)} draft steps)")
    return Check(name, FAIL, f"τ = {tau:.2f}: the target never accepts a draft token (untrained or random "
                 "lm_head, draft trained for another target, or aux layer ids off by one)",
                 "check the checkpoint is the trained one for this target; retrain or re-export it")
