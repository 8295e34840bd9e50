"""`specforge serve`: an OpenAI-compatible chat server over the embedded batched engine (FastAPI + uvicorn).

Routes: ``POST /v1/chat/completions`` (streaming as server-sent events, and not), ``GET /v1/models``,
``GET /health``. Concurrent requests share one batched engine (dynamic batching); with a draft model they go
through the built-in speculative decoder instead (:class:`SpeculativeGenerator`), whose greedy output
equals the plain target's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import (
    Request,  # at module level: FastAPI resolves the handlers' (string) annotations here
)

from specforge.regen.embedded import FatalBackendError, GenerationError
from specforge.regen.engine import GenRequest


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _params(body) -> tuple[Any, str | None]:
    """Validate a chat-completions body -> (params, None) or (None, what is wrong)."""
    if not isinstance(body, dict):
        return None, "the body must be a JSON object"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return None, "'messages' must be a non-empty list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            return None, f"messages[{i}] needs a role (system/user/assistant) and a text content"
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or 256
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    n = body.get("n", 1)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return None, "'max_tokens' must be a positive integer"
    if not isinstance(temperature, (int, float)) or temperature < 0:
        return None, "'temperature' must be >= 0"
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        return None, "'top_p' must be in (0, 1]"
    if n != 1:
        return None, "only n = 1 is supported"
    seed = body.get("seed")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs], "max_tokens": max_tokens,
            "temperature": float(temperature), "top_p": float(top_p),
            "seed": int(seed) if isinstance(seed, int) else uuid.uuid4().int & 0x7FFFFFFF,
            "stream": bool(body.get("stream", False)),
            "include_usage": bool((body.get("stream_options") or {}).get("include_usage", False))}, None


def create_app(gen, model_name: str):
    """The FastAPI app serving ``gen`` (an :class:`EmbeddedGenerator` or :class:`SpeculativeGenerator`)."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from specforge.regen.embedded import chat_prompt_ids

    app = FastAPI(title="specforge serve")
    created = int(time.time())

    @app.get("/health")
    async def health():
        if getattr(gen, "_fatal", None) is not None:
            return _error(503, f"engine failed: {gen._fatal}", "server_error")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "specforge"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not valid JSON")
        p, why = _params(body)
        if why:
            return _error(400, why)
        prompt = chat_prompt_ids(gen.tokenizer, p["messages"])
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        head = {"id": cid, "created": int(time.time()), "model": body.get("model") or model_name}
        if p["stream"]:
            return StreamingResponse(_stream(gen, prompt, p, head), media_type="text/event-stream")
        try:
            req = await gen.generate_ids(prompt, p["max_tokens"], p["temperature"], p["top_p"], p["seed"])
        except GenerationError as e:
            return _error(400, str(e))
        except FatalBackendError as e:
            return _error(503, str(e), "server_error")
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.decode(req.output)},
                             "finish_reason": req.finish_reason}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(req.output),
                          "total_tokens": len(prompt) + len(req.output)}}

    return app


async def _stream(gen, prompt: list[int], p: dict, head: dict):
    """Server-sent events: a role chunk, text deltas as tokens arrive, the finish chunk, [DONE]."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def chunk(delta: dict, finish=None, **extra) -> str:
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                      **extra}) + "\n\n"

    req = GenRequest(prompt, p["max_tokens"], p["temperature"], p["top_p"], p["seed"],
                     on_token=lambda r, toks: loop.call_soon_threadsafe(q.put_nowait, ("tok", None)),
                     on_done=lambda r: loop.call_soon_threadsafe(q.put_nowait, ("done", None)))
    yield chunk({"role": "assistant", "content": ""})
    try:
        gen.submit(req)
    except FatalBackendError as e:
        yield "data: " + json.dumps({"error": {"message": str(e), "type": "server_error"}}) + "\n\n"
        return
    sent = ""
    try:
        while True:
            kind, _ = await q.get()
            text = gen.decode(list(req.output))
            # Hold back an incomplete UTF-8 character until its next token arrives.
            if kind == "tok" and text.endswith("\ufffd"):
                continue
            if len(text) > len(sent) and text.startswith(sent):
                yield chunk({"content": text[len(sent):]})
                sent = text
            if kind == "done":
                break
    finally:
        if req.finish_reason is None:
            req.cancelled = True  # the client went away: free the slot
    if req.finish_reason == "error":
        yield "data: " + json.dumps({"error": {"message": req.error, "type": "invalid_request_error"}}) + "\n\n"
    else:
        yield chunk({}, req.finish_reason)
        if p["include_usage"]:
            yield "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [],
                                         "usage": {"prompt_tokens": len(prompt),
                                                   "completion_tokens": len(req.output),
                                                   "total_tokens": len(prompt) + len(req.output)}}) + "\n\n"
    yield "data: [DONE]\n\n"
