"""A loopback fake of the Anthropic, OpenAI and Gemini HTTP APIs, for tests that use the real SDKs.

Point the official SDKs at it through their base-URL variables (:meth:`FakeProviderServer.env`)
and script what each provider answers::

    from nyxnb.testing import FakeProviderServer, credit_exhausted, reply

    with FakeProviderServer() as srv:
        srv.patch_env(monkeypatch)
        srv.script("anthropic", credit_exhausted())
        srv.script("openai", reply("hello", input_tokens=12, output_tokens=3))
        srv.limit("openai", rpm=600, tpm=100_000)     # x-ratelimit-* headers and 429s
        srv.set_latency("google", (100, 500))         # ms, fixed or a uniform range
        ...

Each request consumes the next scripted action of its provider; when none is left the provider's
default (see :meth:`FakeProviderServer.set_default`) answers, by default a deterministic reply.
Error actions render in each provider's own wire format, so the SDKs raise their real exceptions;
transport faults (:mod:`nyxnb.testing.faults`) hang, send malformed or HTML bodies, or drop the
connection.  Limits (:mod:`nyxnb.testing.limits`) are checked before a scripted action is used:
a throttled request consumes nothing and counts in :attr:`throttled`.

The server runs on asyncio, on a background thread with its own event loop, so thousands of
concurrent or hanging requests cost no threads.

Extra routes (the batch APIs of ``nyxnb.testing.batches``) register without editing this
module::

    async def create_batch(request: FakeRequest) -> FakeResponse:
        return FakeResponse(200, {"id": "batch_1", "object": "batch"})

    srv.add_route("POST", r"/v1/batches$", create_batch)

Routes are matched (``re.search`` on the path without its query) in registration order, before
the built-in provider routes; a handler gets a :class:`FakeRequest` and returns a
:class:`FakeResponse`, and runs on the server's loop (keep it non-blocking).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from nyxnb.testing.faults import (
    FAKE_KEYS,
    PROVIDERS,
    Action,
    Fault,
    Flaky,
    Hang,
    Raw,
    Reply,
    Reset,
)
from nyxnb.testing.limits import Limit, RateLimits
from nyxnb.testing.streams import aws_event_stream, stream_events, wants_stream
from nyxnb.testing.wire import (
    DEFAULT_MODELS,
    fault_body,
    models_body,
    models_provider,
    prompt_of,
    reply_body,
    request_tokens,
    route,
    schema_of,
)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}


@dataclass(frozen=True)
class FakeRequest:
    """One HTTP request as a route handler sees it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    match: re.Match[str] | None = None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} if it is not one)."""
        return _json_object(self.body)


@dataclass(frozen=True)
class FakeResponse:
    """What a route handler answers: a JSON-able object or raw bytes."""

    status: int
    body: object = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Handler = Callable[[FakeRequest], Awaitable[FakeResponse]]
Latency = float | tuple[float, float]


class FakeProviderServer:
    """An asyncio HTTP/1.1 server on 127.0.0.1 speaking the three providers' wire formats."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed: int = 0) -> None:
        self._address = (host, port)
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Action]] = {p: deque() for p in PROVIDERS}
        self._defaults: dict[str, Action] = {p: Reply() for p in PROVIDERS}
        self._latency: dict[str, Latency] = {}
        self._flaky: dict[tuple[int, str], int] = {}
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._port = 0
        self.limits = RateLimits()
        self.hits: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self.throttled: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.arrivals: list[tuple[str, float]] = []  # (provider, time.time()) of every request
        #: every request with its headers (keys, Azure's api-key, AWS signatures), in order
        self.received: list[FakeRequest] = []
        #: what each provider's list-models API answers
        self.models: dict[str, tuple[str, ...]] = dict(DEFAULT_MODELS)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeProviderServer:
        """Bind and serve on a daemon thread running its own event loop; returns self."""
        if self._loop is not None:
            return self
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        loop.run_forever()
        loop.close()

    async def _bind(self) -> None:
        host, port = self._address
        self._server = await asyncio.start_server(self._serve, host, port)
        self._port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop serving, drop hanging requests and every connection, and join the thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):  # hanging requests end with a dropped connection
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash) of the running server."""
        if self._loop is None:
            raise RuntimeError("FakeProviderServer is not running; call start() first")
        return f"http://{self._address[0]}:{self._port}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing every SDK at this server, with fake keys."""
        url = self.url
        base = {"ANTHROPIC_BASE_URL": url, "OPENAI_BASE_URL": f"{url}/v1"}
        return base | {"GOOGLE_GEMINI_BASE_URL": url, **FAKE_KEYS}

    def patch_env(self, monkeypatch: Any) -> FakeProviderServer:
        """Apply :meth:`env` with pytest's ``monkeypatch``; returns self."""
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        return self

    # -- scripting -------------------------------------------------------------------------
    def script(self, provider: str, *actions: Action) -> FakeProviderServer:
        """Queue actions for ``provider``, consumed one per request."""
        with self._lock:
            self._queue(provider).extend(actions)
        return self

    def set_default(self, provider: str, action: Action) -> FakeProviderServer:
        """What ``provider`` does once its script is used up (initially a deterministic reply)."""
        with self._lock:
            self._queue(provider)
            self._defaults[provider] = action
        return self

    def set_latency(self, provider: str | None, ms: Latency) -> FakeProviderServer:
        """Delay every answer of ``provider`` (None: all) by ``ms``, or uniformly in a range."""
        for name in PROVIDERS if provider is None else (provider,):
            self._queue(name)
            self._latency[name] = ms
        return self

    def limit(
        self,
        provider: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        output_tpm: int | None = None,
        model: str | None = None,
        burst_s: float = 1.0,
        hints: bool = True,
    ) -> FakeProviderServer:
        """Enforce requests/tokens per minute on ``provider`` (each model apart, or ``model``).

        ``hints=False``: answer with no rate headers and 429s without any retry hint.
        """
        self._queue(provider)
        self.limits.set(provider, Limit(rpm, tpm, output_tpm, burst_s, hints), model)
        return self

    def pending(self, provider: str) -> int:
        """How many scripted actions ``provider`` has not consumed yet."""
        with self._lock:
            return len(self._queue(provider))

    def reset(self) -> None:
        """Forget scripts, defaults, latency, limits, hits and recorded requests."""
        with self._lock:
            for p in PROVIDERS:
                self._queues[p].clear()
                self._defaults[p], self.hits[p], self.throttled[p] = Reply(), 0, 0
            self.requests.clear()
            self.arrivals.clear()
            self.received.clear()
            self._latency.clear()
            self._flaky.clear()
        self.limits.clear()

    def add_route(self, method: str, pattern: str, handler: Handler) -> FakeProviderServer:
        """Serve ``method`` requests whose path matches ``pattern`` with ``handler``."""
        self._routes.append((method.upper(), re.compile(pattern), handler))
        return self

    def _queue(self, provider: str) -> deque[Action]:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        return self._queues[provider]

    def _next(self, provider: str, path: str, body: dict[str, Any]) -> tuple[Action, int]:
        with self._lock:
            self.hits[provider] += 1
            self.requests.append((provider, path, body))
            queue = self._queues[provider]
            act = queue.popleft() if queue else self._defaults[provider]
            if isinstance(act, Flaky):
                key = (id(act), prompt_of(provider, body) if act.per_prompt else "")
                seen = self._flaky[key] = self._flaky.get(key, 0) + 1
                act = act.fault if seen <= act.n else act.then
            return act, len(self.requests)

    def _delay_s(self, provider: str, act: Action) -> float:
        fixed = getattr(act, "latency_ms", 0) or 0
        spread = self._latency.get(provider, 0)
        extra = self._random.uniform(*spread) if isinstance(spread, tuple) else spread
        return (fixed + extra) / 1000

    # -- serving ---------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)  # type: ignore[arg-type]
        try:
            while (request := await _read_request(reader)) is not None:
                if not await self._dispatch(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:  # the server is stopping: end quietly (Python 3.11's
            task.uncancel()  # stream callback reports a cancelled handler as an error)
        finally:
            self._conns.discard(task)  # type: ignore[arg-type]
            writer.transport.abort()

    async def _dispatch(self, req: FakeRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        path = req.path.split("?", 1)[0]
        with self._lock:
            self.received.append(req)
        for method, pattern, handler in self._routes:
            match = pattern.search(path)
            if method == req.method and match:
                request = FakeRequest(req.method, req.path, req.headers, req.body, match)
                await _write(writer, await handler(request))
                return True
        listing = models_provider(req.path, req.headers) if req.method == "GET" else None
        if listing is not None:
            await _write(writer, FakeResponse(200, models_body(listing, self.models[listing])))
            return True
        target = route(req.path) if req.method == "POST" else None
        if target is None:
            await _write(
                writer, FakeResponse(404, {"error": {"message": f"no fake API at {path}"}})
            )
            return True
        return await self._provider(target, req, writer)

    async def _provider(
        self, target: tuple[str, str], req: FakeRequest, writer: asyncio.StreamWriter
    ) -> bool:
        provider, model = target
        body = req.json()
        model = model or str(body.get("model", ""))
        with self._lock:
            self.arrivals.append((provider, time.time()))  # admitted or throttled
        verdict = self._admit(provider, model, body)
        if verdict.fault is not None:
            with self._lock:
                self.throttled[provider] += 1
            await asyncio.sleep(self._delay_s(provider, Reply()) / 10)
            await _write(writer, _fault_response(provider, verdict.fault, verdict.headers))
            return True
        act, n = self._next(provider, req.path, body)
        if isinstance(act, Hang):
            await asyncio.sleep(act.seconds)
            act = act.then
        await asyncio.sleep(self._delay_s(provider, act))
        if isinstance(act, Reset):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: 400\r\n\r\n" + b'{"id": "cut')
            await writer.drain()
            return False
        if isinstance(act, Raw):
            await _write(writer, FakeResponse(200, act.body, verdict.headers, act.content_type))
        elif isinstance(act, Fault):
            await _write(writer, _fault_response(provider, act, verdict.headers))
        elif isinstance(act, Reply):
            prompt, schema = prompt_of(provider, body), schema_of(provider, body)
            payload = reply_body(provider, act, model, prompt, n, schema)
            if provider == "openai" and body.get("service_tier"):  # OpenAI echoes the tier
                payload["service_tier"] = body["service_tier"]
            if req.path.split("?")[0].endswith("/invoke-with-response-stream"):  # Bedrock
                frames = aws_event_stream(stream_events(provider, payload))
                await _write_stream(writer, frames, act, verdict.headers, _AWS_STREAM)
            elif wants_stream(req.path, body):
                await _write_stream(writer, stream_events(provider, payload), act, verdict.headers)
            else:
                await _write(writer, FakeResponse(200, payload, verdict.headers))
        return True

    def _admit(self, provider: str, model: str, body: dict[str, Any]) -> Any:
        tokens_in = request_tokens(provider, body)
        with self._lock:
            queue = self._queues[provider]
            upcoming = queue[0] if queue else self._defaults[provider]
        tokens_out = 0
        if isinstance(upcoming, Reply):
            sample = reply_body(provider, upcoming, model, prompt_of(provider, body), 0)
            tokens_out = _output_tokens(provider, sample)
        return self.limits.admit(provider, model, tokens_in, tokens_out)


def _output_tokens(provider: str, body: Mapping[str, Any]) -> int:
    if provider == "anthropic":
        return int(body["usage"]["output_tokens"])
    if provider == "openai":
        return int(body["usage"]["completion_tokens"])
    return int(body["usageMetadata"]["candidatesTokenCount"])


def _fault_response(provider: str, fault: Fault, headers: Mapping[str, str]) -> FakeResponse:
    variant = fault.for_provider(provider)
    merged = {**headers, **variant.headers}
    return FakeResponse(variant.status, fault_body(provider, fault), merged)


async def _read_request(reader: asyncio.StreamReader) -> FakeRequest | None:
    """One HTTP/1.1 request, or None when the client closed the connection."""
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length") or 0))
    return FakeRequest(method.upper(), target, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
        parts.append(await reader.readexactly(size))
        await reader.readline()
    await reader.readline()
    return b"".join(parts)


_SSE = "text/event-stream; charset=utf-8"
_AWS_STREAM = "application/vnd.amazon.eventstream"


async def _write_stream(
    writer: asyncio.StreamWriter,
    events: list[bytes],
    reply: Reply,
    headers: Mapping[str, str],
    content_type: str = _SSE,
) -> None:
    """A 200 of streamed events, one HTTP chunk each, paced as ``reply`` says."""
    head = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", _date()]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += ["Transfer-Encoding: chunked", "", ""]
    writer.write("\r\n".join(head).encode("latin-1"))
    for i, event in enumerate(events):
        if i == 1 and reply.stall_s:
            await writer.drain()
            await asyncio.sleep(reply.stall_s)
        elif i and reply.chunk_delay_ms:
            await writer.drain()
            await asyncio.sleep(reply.chunk_delay_ms / 1000)
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _date() -> str:
    """The ``Date`` header every real answer carries (whole seconds, the server's clock)."""
    return f"Date: {formatdate(usegmt=True)}"


async def _write(writer: asyncio.StreamWriter, response: FakeResponse) -> None:
    body = response.body
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reason = _REASONS.get(response.status, "Error")
    head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}"]
    head += [_date()] if not any(k.lower() == "date" for k in response.headers) else []
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    head += [f"Content-Length: {len(data)}", "", ""]
    writer.write("\r\n".join(head).encode("latin-1") + data)
    await writer.drain()


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
