"""`specforge serve` and the server path of `regenerate`, over loopback only, every wait bounded.

The real client (openai's AsyncOpenAI through specforge's pool) talks to the real server (FastAPI + uvicorn)
run in-process on 127.0.0.1; faults come from a scripted fake server (500s, stalls, kill and restart).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi import (
    Request,  # module level: FastAPI resolves the fake handlers' string annotations here
)
from test_bench_cli import tiny_draft_dir  # noqa: F401 - the shared random draft fixture
from test_regenerate import all_rows, conv_rows, hf_greedy, write_rows

from specforge.cli import main
from specforge.regen.run import RegenOptions, regenerate

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread; start/stop are bounded."""

    def __init__(self, app, port=None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="error",
                                                   access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def address(self):
        return f"{LOOPBACK}:{self.port}"


@pytest.fixture(scope="module")
def tiny_gen(tiny_target_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specforge.regen.embedded import EmbeddedGenerator

    model = AutoModelForCausalLM.from_pretrained(tiny_target_dir, dtype=torch.float32).eval()
    gen = EmbeddedGenerator(model, AutoTokenizer.from_pretrained(tiny_target_dir), batch_size=4, name="tiny")
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def tiny_server(tiny_gen):
    from specforge.regen.server import create_app

    srv = ServerThread(create_app(tiny_gen, "tiny")).start()
    yield srv
    srv.stop()


def _client(srv):
    import openai

    return openai.OpenAI(base_url=f"http://{srv.address}/v1", api_key="x", timeout=30, max_retries=0)


def test_serve_routes_and_greedy_answers(tiny_server, tiny_gen):
    from concurrent.futures import ThreadPoolExecutor

    import httpx2

    base = f"http://{tiny_server.address}"
    assert httpx2.get(base + "/health", timeout=10).json() == {"status": "ok"}
    assert [m["id"] for m in httpx2.get(base + "/v1/models", timeout=10).json()["data"]] == ["tiny"]
    client = _client(tiny_server)
    tok = tiny_gen.tokenizer
    questions = [f"Question number {i}?" for i in range(6)]

    def ask(q):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                              max_tokens=5, temperature=0)

    with ThreadPoolExecutor(6) as pool:  # concurrent requests share the batched engine
        answers = list(pool.map(ask, questions))
    for q, resp in zip(questions, answers):
        ids = tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=False), add_special_tokens=False)["input_ids"]
        ref = hf_greedy(tiny_gen.model, ids, 5, sorted(tiny_gen.eos))
        assert resp.choices[0].message.content == tiny_gen.decode(ref)
        assert resp.usage.completion_tokens == len(ref) and resp.usage.prompt_tokens == len(ids)
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": questions[0]}],
                                            max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answers[0].choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answers[0].choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == answers[0].usage.completion_tokens
    bad = httpx2.post(base + "/v1/chat/completions", json={"messages": []}, timeout=10)
    assert bad.status_code == 400 and "'messages' must be a non-empty list" in bad.json()["error"]["message"]


def test_regenerate_through_serve_equals_embedded(tmp_path, tiny_server, tiny_target_dir):
    rows = conv_rows(4)
    src = write_rows(tmp_path / "in.jsonl", rows)
    common = ["--model-name", tiny_target_dir, "--raw-data-file", src, "--max-tokens", "5", "--no-progress"]
    assert main(["regenerate", *common, "--output-dir", str(tmp_path / "emb"), "--dtype", "float32"]) == 0
    assert main(["regenerate", *common, "--output-dir", str(tmp_path / "srv"),
                 "--server-address-port", tiny_server.address, "--max-concurrency", "3"]) == 0
    key = lambda r: r["id"]
    assert sorted(all_rows(tmp_path / "srv"), key=key) == sorted(all_rows(tmp_path / "emb"), key=key)


@pytest.mark.parametrize("hybrid", [False, True], ids=["eagle3", "eagle3+lookup"])
def test_serve_with_a_draft_gives_the_plain_greedy_output(tiny_target_dir, tiny_draft_dir, tiny_gen, hybrid):  # noqa: F811
    from specforge.regen.server import create_app
    from specforge.regen.speculative import SpeculativeGenerator

    spec = SpeculativeGenerator.load(tiny_target_dir, tiny_draft_dir, "2,3,2,4", device="cpu", dtype="float32",
                                     hybrid_lookup=hybrid)
    assert spec.hybrid_lookup is hybrid
    srv = ServerThread(create_app(spec, "tiny")).start()
    try:
        client = _client(srv)
        for q in ("Tell me a story.", "What is 2+2?"):
            msgs = [{"role": "user", "content": q}]
            got = client.chat.completions.create(model="t", messages=msgs, max_tokens=7, temperature=0)
            ref = asyncio.run(tiny_gen.chat(msgs, 7))
            assert got.choices[0].message.content == ref.text
            assert got.usage.completion_tokens == ref.completion_tokens
    finally:
        srv.stop()
        spec.close()


# ---- faults, with a scripted fake server -------------------------------------------------------------


class Script:
    """What the fake server does: fail every `fail_every`-th request, stall some, count requests."""

    def __init__(self, fail_every=0, stall_every=0, stall_s=0.0, delay_s=0.0):
        self.fail_every, self.stall_every, self.stall_s, self.delay_s = fail_every, stall_every, stall_s, delay_s
        self.n = 0


def fake_app(script: Script):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        script.n += 1
        n = script.n
        if script.fail_every and n % script.fail_every == 0:
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if script.stall_every and n % script.stall_every == 0:
            await asyncio.sleep(script.stall_s)
        await asyncio.sleep(script.delay_s)
        msgs = body["messages"]
        text = f"answer to {msgs[-1]['content']!r} after {sum(m['role'] == 'assistant' for m in msgs)}"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}

    return app


def server_opts(tmp_path, src, servers, **kw):
    kw.setdefault("max_retries", 1)
    return RegenOptions(model_name="fake", raw_data_file=src, output_dir=str(tmp_path / "out"), num_per_shard=4,
                        servers=servers, progress=False, **kw)


def check_accounting(out_dir, n):
    """Every input row is in a shard or in error.jsonl, once."""
    done = [r["id"] for r in all_rows(out_dir)]
    err_path = Path(out_dir) / "error.jsonl"
    errors = [json.loads(x)["id"] for x in err_path.read_text().splitlines()] if err_path.exists() else []
    assert len(done) == len(set(done)) and len(errors) == len(set(errors)) and not set(done) & set(errors)
    assert sorted(done + errors) == sorted(f"r{i}" for i in range(n))
    return done, errors


def test_500s_and_stalls_end_in_shards_or_errors_then_resume_completes(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(12))
    script = Script(fail_every=3, stall_every=5, stall_s=3.0)
    srv = ServerThread(fake_app(script)).start()
    try:
        t0 = time.time()
        stats = regenerate(server_opts(tmp_path, src, [srv.address], timeout=0.5, max_retries=1,
                                       max_concurrency=4))
        assert time.time() - t0 < 30
        done, errors = check_accounting(tmp_path / "out", 12)
        assert errors and stats.error == len(errors)
        reasons = {json.loads(x)["error"] for x in (tmp_path / "out" / "error.jsonl").read_text().splitlines()}
        assert reasons <= {"HTTP 500: boom after 2 attempts", "request timeout after 2 attempts"}
        script.fail_every = script.stall_every = 0
        stats = regenerate(server_opts(tmp_path, src, [srv.address], resume=True))
        assert stats.error == 0 and stats.skipped_done == len(done)
        assert check_accounting(tmp_path / "out", 12)[1] == []
    finally:
        srv.stop()


def test_server_killed_and_restarted_mid_run(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(16))
    script = Script(delay_s=0.05)
    srv = ServerThread(fake_app(script)).start()
    port = srv.port

    def bounce():
        while script.n < 8:
            time.sleep(0.01)
        srv.stop()
        time.sleep(1.0)
        bounce.new = ServerThread(fake_app(script), port=port).start()

    t = threading.Thread(target=bounce, daemon=True)
    t.start()
    try:
        regenerate(server_opts(tmp_path, src, [srv.address], max_retries=6, max_concurrency=2, timeout=5))
        t.join(timeout=20)
        done, errors = check_accounting(tmp_path / "out", 16)
        assert script.n >= 8 and len(done) == 16 and not errors
    finally:
        getattr(bounce, "new", srv).stop()


def test_unreachable_servers_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(2))
    dead = [f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{free_port()}"]
    rc = main(["regenerate", "--raw-data-file", src, "--output-dir", str(tmp_path / "out"),
               "--server-address-port", *dead, "--timeout", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: no server answers at") and dead[1] in err[0]
    assert not (tmp_path / "out").exists()


def test_bad_server_address_is_one_line(tmp_path, capsys):
    src = write_rows(tmp_path / "in.jsonl", conv_rows(1))
    rc = main(["regenerate", "--raw-data-file", src, "--output-dir", str(tmp_path / "out"),
               "--server-address-port", "localhost", "--no-progress"])
    assert rc == 2 and "expected HOST:PORT" in capsys.readouterr().err


def test_sigkill_of_the_client_then_resume(tmp_path):
    n = 24
    src = write_rows(tmp_path / "in.jsonl", conv_rows(n))
    srv = ServerThread(fake_app(Script(delay_s=0.03))).start()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "specforge", "regenerate", "--model-name", "fake", "--raw-data-file", src,
           "--output-dir", str(out), "--server-address-port", srv.address, "--num-per-shard", "5",
           "--max-concurrency", "2", "--no-progress"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while sum(1 for _ in (out.glob("shard_*")) if True) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for p in out.glob("shard_*"):
            if p.suffix == ".jsonl":  # final shards: every line valid JSON
                [json.loads(x) for x in p.read_text().splitlines()]
        rc = subprocess.run(cmd + ["--resume"], timeout=120, capture_output=True, text=True, check=False)
        assert rc.returncode == 0, rc.stderr
        done, _ = check_accounting(out, n)
        assert len(done) == n and not list(out.glob("*.partial"))
    finally:
        srv.stop()
