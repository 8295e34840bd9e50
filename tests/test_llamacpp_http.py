"""`LlamaCppServer(port=..., parallel=...)`: llama.cpp's OpenAI chat endpoint, driven by specforge's client.

The real default target's GGUF answers conversations through the HTTP chat endpoint (llama.cpp applies the
template stored in the GGUF; several slots decode together). Reference: the same GGUF completing, without
HTTP, the token ids that the HF tokenizer's chat template builds, turn by turn with the previous answers in
the history. They agree only if the two templates, the turn order and the stop at <|im_end|> all agree.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

pytest.importorskip("xllamacpp", reason="llama.cpp engine not installed (pip install 'specforge[llamacpp]')")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW = 12
CHATS = [[{"role": "user", "content": "Name a fruit."}],
         [{"role": "system", "content": "Answer in French."},
          {"role": "user", "content": "What is the capital of Italy?"}],
         [{"role": "user", "content": "Count from one to five."}]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ask_all(addr: str, chats: list[list[dict]]) -> list[str]:
    from specforge.regen.client import ServerPool

    pool = ServerPool([addr], "smollm2", timeout=120, max_retries=0)
    await pool.astart()
    try:
        comps = await asyncio.gather(*(pool.chat(c, NEW) for c in chats))
    finally:
        await pool.aclose()
    return [c.text.strip() for c in comps]


def test_http_chat_with_parallel_slots_equals_completion_of_the_hf_template(smollm2_tokenizer):
    from specforge.bench.llamacpp import LlamaCppServer
    from specforge.bench.runner import chat_ids
    from specforge.modeling.loading import DEFAULT_TARGET, OFFLINE_MODELS

    gguf = str(OFFLINE_MODELS[DEFAULT_TARGET].gguf_files()[0])
    with LlamaCppServer(gguf, threads=1, n_ctx=2048 * 3, parallel=3, port=free_port()) as srv:
        assert srv.address and srv.address.startswith("127.0.0.1:")
        first = asyncio.run(ask_all(srv.address, CHATS))  # three at once, in three slots
        second_turn = [*CHATS[0], {"role": "assistant", "content": first[0]},
                       {"role": "user", "content": "And its colour?"}]
        (second,) = asyncio.run(ask_all(srv.address, [second_turn]))
        ref = []
        for msgs in [*CHATS, second_turn]:
            text = srv.complete(chat_ids(smollm2_tokenizer, msgs), NEW).text
            # a cut inside a multi-byte character: the completion endpoint shows U+FFFD, chat drops it
            ref.append(text.rstrip("\ufffd").strip())
    assert [*first, second] == ref
    assert all(ref)
