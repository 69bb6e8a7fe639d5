"""A loopback fake of the Anthropic, OpenAI and Gemini HTTP APIs, for tests that use the real SDKs.

Point the official SDKs at it through their base-URL variables (:meth:`FakeProviderServer.env`)
and script what each provider answers::

    from nyxnb.testing import FakeProviderServer, credit_exhausted, reply

    with FakeProviderServer() as srv:
        srv.patch_env(monkeypatch)
        srv.script("anthropic", credit_exhausted())
        srv.script("openai", reply("hello", input_tokens=12, output_tokens=3))
        ...

Each request consumes the next scripted action of its provider; when none is left the provider's
default (see :meth:`FakeProviderServer.set_default`) answers, by default a deterministic reply.
Error actions render in each provider's own wire format, so the SDKs raise their real exceptions.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

PROVIDERS = ("anthropic", "openai", "google")
FAKE_KEYS = {
    "ANTHROPIC_API_KEY": "sk-ant-fake-0000000000000000",
    "OPENAI_API_KEY": "sk-fake-openai-000000000000",
    "GEMINI_API_KEY": "fake-gemini-key-000000000000",
}
_GEMINI_PATH = re.compile(r"^/[^/]+/models/(?P<model>[^/:]+):generateContent$")
_RPC = "type.googleapis.com/google.rpc."


@dataclass(frozen=True)
class Reply:
    """A successful answer; ``input_tokens`` counts the whole prompt, cached tokens included."""

    text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    stop: str = "end"  # "end" | "max_tokens" | "refusal" | "blocked" (Gemini prompt blocked)
    raw_stop: str | None = None  # exact wire value, e.g. "content_filter" or "RECITATION"
    latency_ms: float = 0


@dataclass(frozen=True)
class Fault:
    """An HTTP error; ``type`` is Anthropic/OpenAI ``error.type`` or Gemini ``error.status``."""

    status: int
    message: str
    code: str | None = None
    type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    details: tuple[Mapping[str, Any], ...] = ()
    latency_ms: float = 0
    variants: Mapping[str, Fault] = field(default_factory=dict)

    def for_provider(self, provider: str) -> Fault:
        """The variant of this fault in ``provider``'s terms."""
        return self.variants.get(provider, self)


@dataclass(frozen=True)
class Hang:
    """Hold the request for ``seconds`` (until the server stops), then answer with ``then``."""

    seconds: float
    then: Reply = field(default_factory=Reply)


Action = Reply | Fault | Hang


def reply(
    text: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cached_tokens: int = 0,
    stop: str = "end",
    latency_ms: float = 0,
    raw_stop: str | None = None,
) -> Reply:
    """A successful answer (``None`` fields take the deterministic defaults)."""
    return Reply(text, input_tokens, output_tokens, cached_tokens, stop, raw_stop, latency_ms)


def error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    latency_ms: float = 0,
) -> Fault:
    """An HTTP error with ``status`` and ``message``, in each provider's wire format."""
    return Fault(status, message, code=code, headers=dict(headers or {}), latency_ms=latency_ms)


def hang(seconds: float) -> Hang:
    """Hold the request for ``seconds`` before answering: drives client timeouts."""
    return Hang(seconds)


def credit_exhausted() -> Fault:
    """Anthropic's 400 for an account out of credit."""
    return Fault(
        400,
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
        type="invalid_request_error",
    )


def insufficient_quota() -> Fault:
    """OpenAI's 429 for an account out of quota (not a rate limit)."""
    return Fault(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        code="insufficient_quota",
        type="insufficient_quota",
    )


def gemini_quota_exhausted() -> Fault:
    """Gemini's 429 RESOURCE_EXHAUSTED for a used-up daily quota."""
    violation = {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        "quotaValue": "250",
    }
    return Fault(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        type="RESOURCE_EXHAUSTED",
        details=({"@type": _RPC + "QuotaFailure", "violations": [violation]},),
    )


def rate_limited(retry_after_s: float = 1.0) -> Fault:
    """A 429 rate limit asking to retry after ``retry_after_s`` seconds."""
    header = {"retry-after": _num(retry_after_s)}
    gemini = Fault(
        429,
        f"Resource has been exhausted (e.g. check quota). Please retry in {retry_after_s}s.",
        type="RESOURCE_EXHAUSTED",
        details=({"@type": _RPC + "RetryInfo", "retryDelay": f"{_num(retry_after_s)}s"},),
    )
    return Fault(
        429,
        "Rate limit reached for requests. Please try again later.",
        code="rate_limit_exceeded",
        headers=header,
        variants={"google": gemini},
    )


def overloaded() -> Fault:
    """Anthropic's 529 overloaded_error (Gemini: 503 UNAVAILABLE, OpenAI: 503)."""
    busy = Fault(503, "The model is overloaded. Please try again later.", type="UNAVAILABLE")
    return Fault(
        529,
        "Overloaded",
        type="overloaded_error",
        variants={"google": busy, "openai": replace(busy, type="server_error")},
    )


def server_error(status: int = 500) -> Fault:
    """A 5xx server error."""
    return Fault(status, "Internal server error")


def auth_error() -> Fault:
    """A rejected API key (Gemini answers 400 API_KEY_INVALID, as the real API does)."""
    gemini = Fault(
        400,
        "API key not valid. Please pass a valid API key.",
        type="INVALID_ARGUMENT",
        details=(
            {
                "@type": _RPC + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            },
        ),
    )
    return Fault(401, "invalid x-api-key", code="invalid_api_key", variants={"google": gemini})


def model_not_found(model: str = "no-such-model") -> Fault:
    """A 404 for an unknown model."""
    return Fault(404, f"model: {model}", code="model_not_found")


def context_too_long() -> Fault:
    """A 400 for a prompt beyond the model's context window."""
    variants = {
        "openai": Fault(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens. Please reduce the length of the messages.",
            code="context_length_exceeded",
        ),
        "google": Fault(
            400,
            "The input token count (1200000) exceeds the maximum number of tokens allowed "
            "(1048576).",
        ),
    }
    return Fault(400, "prompt is too long: 210000 tokens > 200000 maximum", variants=variants)


def prompt_blocked() -> Reply:
    """Gemini's blocked prompt (no candidates); a refusal for the other providers."""
    return Reply(text="", stop="blocked", output_tokens=0)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _words(text: str) -> int:
    return max(1, len(text.split()))


# --- wire formats ------------------------------------------------------------------------------

_STOPS = {
    "anthropic": {"end": "end_turn", "max_tokens": "max_tokens", "refusal": "refusal"},
    "openai": {
        "end": "stop",
        "max_tokens": "length",
        "refusal": "stop",
        "blocked": "content_filter",
    },
    "google": {"end": "STOP", "max_tokens": "MAX_TOKENS", "refusal": "SAFETY"},
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 429: "requests"}
_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def fault_body(provider: str, fault: Fault) -> dict[str, Any]:
    """The JSON error body ``provider`` sends for ``fault``."""
    f, status = fault.for_provider(provider), fault.for_provider(provider).status
    if provider == "anthropic":
        etype = f.type or _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": etype, "message": f.message}}
    if provider == "openai":
        etype = f.type or _OPENAI_TYPES.get(status) or _openai_type(status)
        return {"error": {"message": f.message, "type": etype, "param": None, "code": f.code}}
    gstatus = f.type or _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")
    err = {"code": status, "message": f.message, "status": gstatus, "details": list(f.details)}
    return {"error": err}


def _openai_type(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


def reply_body(provider: str, r: Reply, model: str, prompt: str, n: int) -> dict[str, Any]:
    """The JSON body ``provider`` sends for a successful reply ``r``."""
    text = f"fake {provider} answer to: {prompt[:60]}" if r.text is None else r.text
    tokens_in = _words(prompt) + r.cached_tokens if r.input_tokens is None else r.input_tokens
    tokens_out = _words(text) if r.output_tokens is None else r.output_tokens
    raw = r.raw_stop or _STOPS[provider].get(r.stop, _STOPS[provider]["refusal"])
    usage = (tokens_in, tokens_out, r.cached_tokens)
    if provider == "anthropic":
        return _anthropic_reply(text, raw, model, usage, n)
    if provider == "openai":
        refused = r.stop == "refusal" and r.raw_stop is None
        return _openai_reply(text, raw, model, usage, n, refused)
    return _gemini_reply(text, raw, model, usage, n, blocked=r.stop == "blocked")


def _anthropic_reply(
    text: str, raw: str, model: str, usage: tuple[int, int, int], n: int
) -> dict[str, Any]:
    tokens_in, tokens_out, cached = usage
    return {
        "id": f"msg_fake_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": raw,
        "stop_sequence": None,
        "usage": {
            "input_tokens": tokens_in - cached,
            "output_tokens": tokens_out,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }


def _openai_reply(
    text: str, raw: str, model: str, usage: tuple[int, int, int], n: int, refused: bool
) -> dict[str, Any]:
    tokens_in, tokens_out, cached = usage
    message = {"role": "assistant", "content": None if refused else text}
    message["refusal"] = text if refused else None
    return {
        "id": f"chatcmpl-fake{n}",
        "object": "chat.completion",
        "created": 1_700_000_000 + n,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": raw, "logprobs": None}],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def _gemini_reply(
    text: str, raw: str, model: str, usage: tuple[int, int, int], n: int, blocked: bool
) -> dict[str, Any]:
    tokens_in, tokens_out, cached = usage
    meta = {
        "promptTokenCount": tokens_in,
        "candidatesTokenCount": tokens_out,
        "totalTokenCount": tokens_in + tokens_out,
        "cachedContentTokenCount": cached,
    }
    body: dict[str, Any] = {"usageMetadata": meta, "modelVersion": model, "responseId": f"r{n}"}
    if blocked:
        body["promptFeedback"] = {"blockReason": "SAFETY"}
        return body
    candidate: dict[str, Any] = {"finishReason": raw, "index": 0}
    if text:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    body["candidates"] = [candidate]
    return body


def prompt_of(provider: str, body: Mapping[str, Any]) -> str:
    """The text of the last user message of a request body."""
    if provider == "google":
        turns = [c for c in body.get("contents", []) if c.get("role", "user") == "user"]
        parts = turns[-1].get("parts", []) if turns else []
        return " ".join(str(p.get("text", "")) for p in parts)
    turns = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = turns[-1].get("content", "") if turns else ""
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping))
    return str(content)


def route(path: str) -> tuple[str, str] | None:
    """``(provider, model)`` for a request path, or None if no fake API serves it."""
    path = path.split("?", 1)[0]
    if path.endswith("/v1/messages"):
        return "anthropic", ""
    if path.endswith("/chat/completions"):
        return "openai", ""
    match = _GEMINI_PATH.search(path)
    if match:
        return "google", match.group("model")
    return None


# --- the server --------------------------------------------------------------------------------


class _Monkeypatch(Protocol):
    def setenv(self, name: str, value: str, prepend: str | None = None) -> None: ...


class FakeProviderServer:
    """A ThreadingHTTPServer on 127.0.0.1 speaking the three providers' wire formats."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queues: dict[str, deque[Action]] = {p: deque() for p in PROVIDERS}
        self._defaults: dict[str, Action] = {p: Reply() for p in PROVIDERS}
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.hits: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    # lifecycle
    def start(self) -> FakeProviderServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server(self._address, _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests, close every connection and the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        httpd.join_handlers(timeout=5)

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addresses and environment
    @property
    def port(self) -> int:
        """The bound port."""
        if self._httpd is None:
            raise RuntimeError("FakeProviderServer is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self._address[0]}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing every SDK at this server, with fake keys."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "OPENAI_BASE_URL": f"{self.url}/v1",
            "GOOGLE_GEMINI_BASE_URL": self.url,
            **FAKE_KEYS,
        }

    def patch_env(self, monkeypatch: _Monkeypatch) -> FakeProviderServer:
        """Apply :meth:`env` with pytest's ``monkeypatch``; returns self."""
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        return self

    # scripting
    def script(self, provider: str, *actions: Action) -> FakeProviderServer:
        """Queue actions for ``provider``, consumed one per request."""
        _check(provider)
        with self._lock:
            self._queues[provider].extend(actions)
        return self

    def set_default(self, provider: str, action: Action) -> FakeProviderServer:
        """What ``provider`` does once its script is used up (initially a deterministic reply)."""
        _check(provider)
        with self._lock:
            self._defaults[provider] = action
        return self

    def reset(self) -> None:
        """Forget scripts, defaults, hits and recorded requests."""
        with self._lock:
            for p in PROVIDERS:
                self._queues[p].clear()
                self._defaults[p] = Reply()
                self.hits[p] = 0
            self.requests.clear()

    def pending(self, provider: str) -> int:
        """How many scripted actions ``provider`` has not consumed yet."""
        with self._lock:
            return len(self._queues[provider])

    def _next(self, provider: str, path: str, body: dict[str, Any]) -> tuple[Action, int]:
        with self._lock:
            self.hits[provider] += 1
            self.requests.append((provider, path, body))
            queue = self._queues[provider]
            action = queue.popleft() if queue else self._defaults[provider]
            return action, len(self.requests)

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def _check(provider: str) -> None:
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._workers: list[threading.Thread] = []
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        worker = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        self._workers = [t for t in self._workers if t.is_alive()] + [worker]
        worker.start()

    def join_handlers(self, timeout: float) -> None:
        for worker in list(self._workers):
            worker.join(timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, stop()) are expected; stay quiet."""


def _handler_for(server: FakeProviderServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_FakeHandler):
        fake = server

    return Handler


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    fake: FakeProviderServer

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, True)

    def finish(self) -> None:
        self.fake._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_POST(self) -> None:
        target = route(self.path)
        body = self._read_json()
        if target is None:
            self._send(404, {"error": {"message": f"no fake API at {self.path}"}})
            return
        provider, model = target
        action, n = self.fake._next(provider, self.path, body)
        self._perform(provider, model or str(body.get("model", "")), body, action, n)

    def do_GET(self) -> None:
        self._send(404, {"error": {"message": f"no fake API at {self.path}"}})

    def _perform(
        self, provider: str, model: str, body: dict[str, Any], act: Action, n: int
    ) -> None:
        if isinstance(act, Hang):
            self.fake._wait(act.seconds)
            act = act.then
        self.fake._wait(act.latency_ms / 1000)
        if isinstance(act, Fault):
            variant = act.for_provider(provider)
            self._send(variant.status, fault_body(provider, act), variant.headers)
        else:
            self._send(200, reply_body(provider, act, model, prompt_of(provider, body), n))

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    def _send(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True
