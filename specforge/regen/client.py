"""The server path: OpenAI-compatible chat-completions servers, used together through one async client.

Every ``--server-address-port`` address gets an ``openai.AsyncOpenAI`` client (its own retries off: the
pool retries, so it can move a request to another server). A request goes to the server with the fewest
requests in flight (ties in turn); timeouts, connection errors, 429 and 5xx are retried up to
``--max-retries`` times with exponential backoff and jitter; other 4xx fail the row at once. A server that
is killed and restarted mid-run only costs retries. Before the run every server is probed
(``GET /v1/models``); when none answers the run stops with one line and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import urlparse

from specforge.errors import SpecforgeError
from specforge.regen.embedded import Completion, GenerationError

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429}


def parse_address(addr: str) -> str:
    """``host:port`` or ``http(s)://host:port[/v1]`` -> the API base URL ``http://host:port/v1``."""
    text = addr.strip()
    if "://" not in text:
        text = "http://" + text
    url = urlparse(text)
    try:
        port = url.port
    except ValueError:
        port = None
    if not url.hostname or port is None:
        raise SpecforgeError(f"--server-address-port {addr!r}: expected HOST:PORT (e.g. 127.0.0.1:30000).")
    path = url.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{url.scheme}://{url.hostname}:{port}{path}"


def _reason(e: BaseException) -> str:
    import openai

    if isinstance(e, openai.APITimeoutError):
        return "request timeout"
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        return f"connection error ({type(cause).__name__ if cause else 'no response'})"
    if isinstance(e, openai.APIStatusError):
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body.get("detail", body)) if body else None
        msg = err.get("message") if isinstance(err, dict) else err
        msg = str(msg).splitlines()[0][:200] if msg else ""
        return f"HTTP {e.status_code}" + (f": {msg}" if msg else "")
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _retryable(e: BaseException) -> bool:
    import openai

    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code in RETRY_STATUS or e.status_code >= 500
    return False


class ServerPool:
    """Least-loaded async client over several OpenAI-compatible servers (``chat()`` like the embedded one)."""

    def __init__(self, addresses: list[str], model: str, timeout: float = 600.0, max_retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0):
        import openai

        for noisy in ("httpx2", "httpx", "openai"):  # one INFO line per request otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if not addresses:
            raise SpecforgeError("no --server-address-port given.")
        if timeout <= 0:
            raise SpecforgeError(f"--timeout must be > 0 seconds (got {timeout}).")
        if max_retries < 0:
            raise SpecforgeError(f"--max-retries must be >= 0 (got {max_retries}).")
        self.urls = [parse_address(a) for a in addresses]
        self.addresses = list(addresses)
        self.model = model
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.clients = [openai.AsyncOpenAI(base_url=u, api_key="EMPTY", timeout=timeout, max_retries=0)
                        for u in self.urls]
        self.inflight = [0] * len(self.urls)
        self.requests = [0] * len(self.urls)
        self._turn = 0
        self.retries = 0

    @classmethod
    def connect(cls, opts) -> ServerPool:
        """Build the pool from RegenOptions (``astart`` probes the servers inside the run's event loop)."""
        pool = cls(opts.servers, opts.model_name, timeout=opts.timeout, max_retries=opts.max_retries)
        pool.probe_timeout = min(opts.timeout, 10.0)
        return pool

    probe_timeout = 10.0

    async def astart(self) -> None:
        """GET /v1/models on every server; drop dead ones with a warning, fail if none answers."""
        async def one(i):
            try:
                await self.clients[i].with_options(timeout=self.probe_timeout).models.list()
                return None
            except Exception as e:  # noqa: BLE001 - any failure means "not usable now"
                import openai

                if isinstance(e, openai.APIStatusError) and e.status_code < 500:
                    return None  # it answers; /v1/models may just be missing
                return f"{self.addresses[i]} ({_reason(e)})"

        results = await asyncio.gather(*(one(i) for i in range(len(self.urls))))
        alive = [i for i, r in enumerate(results) if r is None]
        dead = [r for r in results if r is not None]
        if not alive:
            await self.aclose()
            raise SpecforgeError(
                f"no server answers at {', '.join(dead)}; start one (e.g. `specforge serve --model-path M "
                "--port 30000`) or fix --server-address-port; nothing was written.")
        if dead:
            logger.warning("skipping unreachable server(s): %s", ", ".join(dead))
            for i, r in enumerate(results):
                if r is not None:
                    await self.clients[i].close()
        keep = lambda xs: [xs[i] for i in alive]
        self.urls, self.addresses, self.clients = keep(self.urls), keep(self.addresses), keep(self.clients)
        self.inflight = [0] * len(alive)
        self.requests = [0] * len(alive)

    def _pick(self) -> int:
        low = min(self.inflight)
        n = len(self.inflight)
        for k in range(n):  # the first least-loaded server after the last one picked (round robin on ties)
            i = (self._turn + k) % n
            if self.inflight[i] == low:
                self._turn = i + 1
                return i
        return 0

    async def chat(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0) -> Completion:
        """One chat completion with retries; raises :class:`GenerationError` with the last reason."""
        extra = {"seed": seed} if temperature > 0 else {}
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            i = self._pick()
            self.inflight[i] += 1
            self.requests[i] += 1
            try:
                resp = await self.clients[i].chat.completions.create(  # type: ignore[call-overload]
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                    top_p=top_p, stream=False, **extra)  # (plain dicts for messages; the SDK's overloads want TypedDicts)
            except Exception as e:  # noqa: BLE001 - classified below
                last = _reason(e)
                if not _retryable(e):
                    raise GenerationError(f"{last} from {self.addresses[i]}") from None
            else:
                choice = resp.choices[0]
                usage = getattr(resp, "usage", None)
                return Completion(choice.message.content or "", int(getattr(usage, "completion_tokens", 0) or 0),
                                  choice.finish_reason or "stop", int(getattr(usage, "prompt_tokens", 0) or 0))
            finally:
                self.inflight[i] -= 1
            if attempt < self.max_retries:
                self.retries += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
                await asyncio.sleep(delay)
        raise GenerationError(f"{last} after {self.max_retries + 1} attempts")

    async def aclose(self) -> None:
        for c in self.clients:
            await c.close()

    def close(self) -> None:
        """Nothing left to do outside the event loop (``aclose`` closed the connections)."""
