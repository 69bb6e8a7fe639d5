"""The fake's batch APIs (Anthropic's here; OpenAI's and Gemini's in ``batches_openai`` and
``batches_google``).

:class:`FakeBatches` is a state machine independent of the HTTP transport: ``handle(method,
path, headers, body)`` returns ``(status, headers, body bytes)`` or None when the path is not
its.  Batches end ``delay_s`` after creation; :meth:`FakeBatches.plan` makes chosen lines of
the next batch ``errored`` or ``expired``.  Requests marked with ``cache_control`` are counted
as cache writes the first time their prefix is seen and cache reads after (1 token per word,
like the rest of the fake; a prefix under ``min_cache_tokens`` is not cached, as Anthropic
does).  :class:`FakeBatchServer` mounts it, the OpenAI Files + Batches fake and the Gemini
batch fake on the loopback fake; its :meth:`~FakeBatchServer.fail_polls` answers Anthropic status
polls with HTTP faults or a dropped connection (outages while a batch waits), and
:meth:`~FakeBatchServer.storm` answers every Anthropic batch request with bare 429s for a while.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from nyxnb.testing.batchbook import BatchBook, FakeBatch, Response, text_of, words
from nyxnb.testing.batches_google import CREATE as GEMINI_CREATE
from nyxnb.testing.batches_google import ROUTES as GEMINI_ROUTES
from nyxnb.testing.batches_google import FakeGeminiBatches
from nyxnb.testing.batches_openai import BATCHES as OPENAI_BATCHES
from nyxnb.testing.batches_openai import FILES, FakeOpenAIBatches
from nyxnb.testing.faults import Fault, Hang, Reset, bare_rate_limited
from nyxnb.testing.server import (
    FakeProviderServer,
    FakeRequest,
    FakeResponse,
    Reply,
    _fault_response,
    prompt_of,
    reply_body,
    schema_of,
)
from nyxnb.testing.streams import streamed, wants_stream

_BATCH = re.compile(r"^/v1/messages/batches(?:/(?P<id>[^/]+)(?:/(?P<op>results|cancel))?)?$")
_GENERATE = r"^/[^/]+/models/[^/:]+:(?:stream)?[gG]enerateContent$"
_JSON = {"Content-Type": "application/json"}


def _cached_prefix(params: Mapping[str, Any]) -> str:
    """The text up to the last ``cache_control`` mark (system first, then the messages)."""
    blocks: list[dict[str, Any]] = []
    system = params.get("system")
    blocks += system if isinstance(system, list) else [{"text": system or ""}]
    for m in params.get("messages", []):
        content = m.get("content")
        blocks += content if isinstance(content, list) else [{"text": content or ""}]
    marked = [i for i, b in enumerate(blocks) if isinstance(b, Mapping) and b.get("cache_control")]
    return "" if not marked else " ".join(str(b.get("text", "")) for b in blocks[: marked[-1] + 1])


class FakeBatches(BatchBook):
    """Anthropic Message Batches and prompt caching, transport-free."""

    id_prefix = "msgbatch_fake"

    def __init__(self, delay_s: float = 0.0, min_cache_tokens: int = 1024) -> None:
        super().__init__(delay_s, min_cache_tokens)
        self._prefixes: set[str] = set()

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response | None:
        """Answer a batch request, or None if ``path`` is not a batch endpoint."""
        match = _BATCH.match(path.split("?")[0])
        if match is None:
            return None
        with self._lock:
            self.calls.append((method, path))
            batch_id, op = match["id"], match["op"]
            if batch_id is None and method == "POST":
                return self._create(json.loads(body or b"{}"))
            batch = self.batches.get(batch_id or "")
            if batch is None:
                return _error(404, "not_found_error", f"no batch {batch_id}")
            if op == "cancel":
                batch.canceled = True
            if op == "results":
                return self._results(batch)
            batch.retrieved += 1
            return 200, _JSON, json.dumps(self._view(batch, headers)).encode()

    def usage(self, params: Mapping[str, Any]) -> tuple[Reply, int]:
        """A reply counting prompt-cache reads, and the tokens written to the cache."""
        total = words(text_of(params.get("system"))) + sum(
            words(text_of(m.get("content"))) for m in params.get("messages", [])
        )
        prefix = _cached_prefix(params)
        prefix = prefix if words(prefix) >= self.min_cache_tokens else ""  # as Anthropic does
        key = hashlib.sha256(prefix.encode()).hexdigest()
        hit = bool(prefix) and key in self._prefixes
        if prefix:
            self._prefixes.add(key)
        written = 0 if hit or not prefix else words(prefix)
        return Reply(input_tokens=total, cached_tokens=words(prefix) if hit else 0), written

    def message(self, params: Mapping[str, Any], n: int) -> dict[str, Any]:
        """A Messages API answer for ``params`` with cache accounting."""
        reply, written = self.usage(params)
        model = str(params.get("model", ""))
        body = reply_body(
            "anthropic",
            reply,
            model,
            prompt_of("anthropic", params),
            n,
            schema_of("anthropic", params),
        )
        body["usage"]["input_tokens"] -= written
        body["usage"]["cache_creation_input_tokens"] = written
        return body

    def _create(self, body: Mapping[str, Any]) -> Response:
        batch = self._new(list(body.get("requests", [])))
        return 200, _JSON, json.dumps(self._view(batch, {})).encode()

    def _view(self, batch: FakeBatch, headers: Mapping[str, str]) -> dict[str, Any]:
        ended, n = self._ended(batch), len(batch.requests)
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if not ended:
            counts["processing"] = n
        else:
            for i in range(n):
                outcome = self._outcome(batch, i)
                counts[outcome if outcome in counts else "succeeded"] += 1  # a malformed line
        stamp = "2026-12-01T00:00:00Z"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": stamp,
            "expires_at": "2026-12-02T00:00:00Z",
            "ended_at": stamp if ended else None,
            "cancel_initiated_at": stamp if batch.canceled else None,
            "archived_at": None,
            "results_url": f"/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _results(self, batch: FakeBatch) -> Response:
        lines = []
        for i, req in enumerate(batch.requests):
            outcome = self._outcome(batch, i)
            result: dict[str, Any] = {"type": outcome}
            if outcome == "succeeded":
                result["message"] = self.message(req["params"], i)
            elif outcome == "errored":
                err = {"type": "api_error", "message": self.line_error}
                result["error"] = {"type": "error", "error": err}
            line = json.dumps({"custom_id": req["custom_id"], "result": result})
            lines.append(_MALFORMED.get(outcome, lambda x: x)(line))
        return 200, {"Content-Type": "application/x-jsonl"}, "\n".join(lines).encode()


#: Planned outcomes that spoil a results line: cut JSON still naming its custom id, or garbage.
_MALFORMED = {
    "malformed": lambda line: line[: line.index('"result"') + 20],
    "malformed-anonymous": lambda line: "\x00<html>502 Bad Gateway</html>",
}


def _error(status: int, kind: str, message: str) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return status, _JSON, json.dumps(body).encode()


class FakeBatchServer(FakeProviderServer):
    """The loopback fake with the three batch APIs mounted (and, opt-in, live prompt caching).

    ``batches`` is the Anthropic Message Batches fake, ``openai_batches`` the OpenAI Files +
    Batches fake, ``gemini_batches`` the Gemini batch-mode fake; :meth:`book` picks one by
    provider name.  ``live_caching`` makes live Messages, chat completions and generateContent
    calls count cache reads as the batches do.
    """

    def __init__(self, delay_s: float = 0.0, live_caching: bool = False) -> None:
        super().__init__()
        self.batches = FakeBatches(delay_s)
        self.openai_batches = FakeOpenAIBatches(delay_s)
        self.gemini_batches = FakeGeminiBatches(delay_s)
        self.live_caching = live_caching
        #: faults answering the next status polls (retrieve) instead of the batch, in order
        self.poll_faults: deque[Fault | Reset] = deque()
        #: per provider, what the next batch creates meet (see :meth:`fail_creates`)
        self.create_faults: dict[str, deque[Fault | Reset | Hang]] = {}
        self._storm: tuple[float, Fault] = (0.0, bare_rate_limited())
        #: Anthropic batch requests answered by a :meth:`storm`: (monotonic time, method, path)
        self.stormed: list[tuple[float, str, str]] = []
        for method in ("GET", "POST"):
            self.add_route(method, _BATCH.pattern, self._batch_route)
            self.add_route(method, FILES.pattern, self._openai_route)
            self.add_route(method, OPENAI_BATCHES.pattern, self._openai_route)
        for method, pattern in GEMINI_ROUTES:  # under /v1beta: no clash with OpenAI's /v1
            self.add_route(method, pattern.pattern, self._gemini_route)
        if live_caching:
            self.add_route("POST", r"^/v1/messages$", self._cached_message)
            self.add_route("POST", r"^/v1/chat/completions$", self._cached_completion)
            self.add_route("POST", _GENERATE, self._cached_generate)

    def book(self, provider: str) -> BatchBook:
        """The batch fake of ``provider`` (``anthropic``, ``openai`` or ``google``)."""
        books: dict[str, BatchBook] = {
            "anthropic": self.batches,
            "openai": self.openai_batches,
            "google": self.gemini_batches,
        }
        return books[provider]

    def fail_polls(self, *faults: Fault | Reset) -> FakeBatchServer:
        """Answer the next status polls with these faults (``server_error()``, ``reset()``...)."""
        self.poll_faults.extend(faults)
        return self

    def fail_creates(self, provider: str, *faults: Fault | Reset | Hang) -> FakeBatchServer:
        """The next batch creates of ``provider`` meet these, in order.

        A :class:`Fault` (``server_error()``, ``rate_limited()``, ``credit_exhausted()``...)
        answers instead of creating: nothing is created.  :class:`Reset` and :class:`Hang` come
        *after* the batch was created -- the connection drops, or the answer is held until the
        client times out -- the ambiguous failures where the provider holds a batch the client
        never heard of.
        """
        self.create_faults.setdefault(provider, deque()).extend(faults)
        return self

    def storm(self, seconds: float, fault: Fault | None = None) -> FakeBatchServer:
        """For ``seconds`` from now, every Anthropic batch request (create, poll, results,
        cancel) is answered by ``fault``: a 429 with no hint at all by default."""
        self._storm = (time.monotonic() + seconds, fault or bare_rate_limited())
        return self

    async def _created(self, provider: str, create: Callable[[], FakeResponse]) -> FakeResponse:
        """Answer a batch create (``create`` makes the batch), with the next planned fault."""
        planned = self.create_faults.get(provider)
        fault = planned.popleft() if planned else None
        if isinstance(fault, Fault):
            return _fault_response(provider, fault, {})
        answer = create()
        if isinstance(fault, Reset):
            raise ConnectionResetError("fake: connection dropped after the batch was created")
        if isinstance(fault, Hang):
            await asyncio.sleep(fault.seconds)
        return answer

    async def _batch_route(self, request: FakeRequest) -> FakeResponse:
        until, fault = self._storm
        if time.monotonic() < until:
            self.stormed.append((time.monotonic(), request.method, request.path))
            return _fault_response("anthropic", fault, {})
        if request.method == "POST" and request.path.split("?")[0] == "/v1/messages/batches":
            return await self._created("anthropic", lambda: self._anthropic(request))
        return self._anthropic(request)

    def _anthropic(self, request: FakeRequest) -> FakeResponse:
        match = request.match
        if request.method == "GET" and match is not None and match["id"] and not match["op"]:
            fault = self.poll_faults.popleft() if self.poll_faults else None
            if isinstance(fault, Reset):  # the server drops the connection without an answer
                raise ConnectionResetError("fake: connection reset during a batch poll")
            if fault is not None:
                self.batches.calls.append(("GET", request.path + " (fault)"))
                return _fault_response("anthropic", fault, {})
        answer = self.batches.handle(request.method, request.path, request.headers, request.body)
        assert answer is not None  # the route's pattern is the batch endpoints'
        return _response(answer)

    async def _openai_route(self, request: FakeRequest) -> FakeResponse:
        if request.method == "POST" and request.path.split("?")[0] == "/v1/batches":
            return await self._created("openai", lambda: self._openai(request))
        return self._openai(request)

    def _openai(self, request: FakeRequest) -> FakeResponse:
        fake = self.openai_batches
        answer = fake.handle(request.method, request.path, request.headers, request.body)
        assert answer is not None  # the routes' patterns are the Files and Batches endpoints'
        return _response(answer)

    async def _gemini_route(self, request: FakeRequest) -> FakeResponse:
        if request.method == "POST" and GEMINI_CREATE.match(request.path.split("?")[0]):
            return await self._created("google", lambda: self._gemini(request))
        return self._gemini(request)

    def _gemini(self, request: FakeRequest) -> FakeResponse:
        fake = self.gemini_batches
        answer = fake.handle(request.method, request.path, request.headers, request.body)
        assert answer is not None  # the routes' patterns are the batch and file endpoints'
        status, headers, body = answer  # upload answers carry x-goog-upload-* headers
        kind = headers.get("Content-Type", "application/json")
        extra = {k: v for k, v in headers.items() if k != "Content-Type"}
        return FakeResponse(status, body, extra, content_type=kind)

    async def _cached_message(self, request: FakeRequest) -> FakeResponse:
        params = request.json()
        self._next("anthropic", request.path, params)
        with self.batches._lock:
            n = len(self.requests)
            message = self.batches.message(params, n)
        return _live("anthropic", request, message)

    async def _cached_completion(self, request: FakeRequest) -> FakeResponse:
        params = request.json()
        self._next("openai", request.path, params)
        with self.openai_batches._lock:
            completion = self.openai_batches.completion(params, len(self.requests))
        return _live("openai", request, completion)

    async def _cached_generate(self, request: FakeRequest) -> FakeResponse:
        params = request.json()
        self._next("google", request.path, params)
        model = request.path.split("/models/", 1)[1].split(":", 1)[0]
        with self.gemini_batches._lock:
            answer = self.gemini_batches.response({"model": model, **params}, len(self.requests))
        return _live("google", request, answer)


def _live(provider: str, request: FakeRequest, body: dict[str, Any]) -> FakeResponse:
    """A live answer, streamed when the request asks for a stream (every live call does)."""
    if wants_stream(request.path, request.json()):
        return FakeResponse(200, streamed(provider, body), content_type="text/event-stream")
    return _response((200, _JSON, json.dumps(body).encode()))


def _response(answer: Response) -> FakeResponse:
    status, headers, body = answer
    kind = dict(headers).get("Content-Type", "application/json")
    return FakeResponse(status, body, content_type=kind)
