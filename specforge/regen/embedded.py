"""The embedded generator: the target in-process, driven by :class:`BatchEngine` on its own thread.

Async callers (the regeneration driver, ``specforge serve``) submit chat messages and await the answer;
the engine thread batches whatever is in flight. torch releases the GIL inside its kernels, so the event
loop stays responsive while the engine computes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

from specforge.errors import SpecforgeError
from specforge.regen.engine import BatchEngine, GenRequest

logger = logging.getLogger(__name__)


@dataclass
class Completion:
    """One chat answer: text, generated token count, ``stop`` or ``length``, prompt token count."""

    text: str
    completion_tokens: int
    finish_reason: str
    prompt_tokens: int = 0


class GenerationError(Exception):
    """A request failed (the row goes to error.jsonl with this message)."""


class FatalBackendError(Exception):
    """The generator itself is broken; the run stops."""


def generation_dtype(dtype: str | None, device: str):
    """``auto`` -> bf16 where the CPU/GPU supports it, else fp32; other names as :func:`resolve_dtype`."""
    import torch

    from specforge.modeling.loading import resolve_dtype

    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        from specforge.inference.precision import cpu_has_fast_bf16

        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return resolve_dtype(dtype, device)


def load_generation_target(model_name: str, device: str = "auto", dtype: str = "auto"):
    """Load target and tokenizer for generation (bf16 where supported); returns ``(model, tokenizer)``."""
    from specforge.modeling.loading import (
        load_target_model,
        load_tokenizer,
        resolve_device,
    )

    device = resolve_device(device)
    torch_dtype = generation_dtype(dtype, device)
    tok = load_tokenizer(model_name)
    model = load_target_model(model_name, dtype=torch_dtype, device=device)
    logger.info("target %s on %s in %s", model_name, device, str(torch_dtype).replace("torch.", ""))
    return model, tok


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` ready for the assistant's answer (the tokenizer's own chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise SpecforgeError("the target's tokenizer has no chat template; regeneration needs a chat model.")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_token_ids(model, tokenizer) -> set[int]:
    """EOS ids from the generation config and the tokenizer (ChatML models end turns with <|im_end|>)."""
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids}


class ThreadedGenerator:
    """Chat answers from a generation loop on its own thread; subclasses implement :meth:`_loop`.

    ``submit`` hands a :class:`GenRequest` to the thread (its callbacks run there); ``generate_ids`` and
    ``chat`` await one answer from asyncio code.
    """

    def __init__(self, model, tokenizer, name: str = "target"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.eos = eos_token_ids(model, tokenizer)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._fatal: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="specforge-engine", daemon=True)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - reported to every waiter, then the run stops
            self._fatal = e
            logger.error("generation engine failed: %s: %s", type(e).__name__, e)
            for r in self._pending():
                r.finish_reason, r.error = "error", f"engine failed: {type(e).__name__}: {e}"
                if r.on_done:
                    r.on_done(r)

    def _loop(self) -> None:
        raise NotImplementedError

    def _pending(self) -> list[GenRequest]:
        """Requests not finished (the inbox's included), for the failure path."""
        out = []
        while True:
            try:
                out.append(self._inbox.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=10)

    # ---- async API ----------------------------------------------------------------------------------

    def submit(self, req: GenRequest) -> None:
        """Hand a request to the engine thread (callbacks run on that thread)."""
        if self._fatal is not None:
            raise FatalBackendError(f"generation engine failed: {self._fatal}")
        self._inbox.put(req)

    async def generate_ids(self, prompt: list[int], max_tokens: int, temperature: float = 0.0,
                           top_p: float = 1.0, seed: int = 0) -> GenRequest:
        """Complete token ids; returns the finished request (``output``, ``finish_reason``)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(r: GenRequest) -> None:
            loop.call_soon_threadsafe(lambda: None if fut.done() else fut.set_result(r))

        self.submit(GenRequest(prompt, max_tokens, temperature, top_p, seed, on_done=done))
        req = await fut
        if self._fatal is not None:
            raise FatalBackendError(f"generation engine failed: {self._fatal}")
        if req.finish_reason == "error":
            raise GenerationError(req.error or "generation failed")
        return req

    def decode(self, ids: list[int]) -> str:
        eos = self.eos
        return self.tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True)

    async def chat(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0) -> Completion:
        """Answer the last user message of ``messages``."""
        prompt = chat_prompt_ids(self.tokenizer, messages)
        req = await self.generate_ids(prompt, max_tokens, temperature, top_p, seed)
        return Completion(self.decode(req.output), len(req.output), req.finish_reason or "stop", len(prompt))


class EmbeddedGenerator(ThreadedGenerator):
    """Loads the target once and answers chats through one batched engine (dynamic batching)."""

    def __init__(self, model, tokenizer, batch_size: int = 8, prefill_chunk: int = 512, name: str = "target"):
        super().__init__(model, tokenizer, name)
        self.engine = BatchEngine(model, self.eos, max_batch=batch_size, prefill_chunk=prefill_chunk)
        self._thread.start()

    @classmethod
    def load(cls, model_name: str, device: str = "auto", dtype: str = "auto", batch_size: int = 8):
        """Load the target (:mod:`specforge.modeling.loading`) and start the engine thread."""
        model, tok = load_generation_target(model_name, device, dtype)
        logger.info("embedded generator: batch %d", batch_size)
        return cls(model, tok, batch_size=batch_size, name=model_name)

    def _pending(self) -> list[GenRequest]:
        return list(self.engine.active) + list(self.engine.queue) + super()._pending()

    def _loop(self) -> None:
        eng = self.engine
        while not self._stop:
            try:
                # Block only while idle; otherwise take whatever arrived and keep decoding.
                item = self._inbox.get(timeout=0.05) if not eng.has_work() else self._inbox.get_nowait()
            except queue.Empty:
                item = None
            while item is not None:
                eng.add(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            if eng.has_work():
                eng.step()
