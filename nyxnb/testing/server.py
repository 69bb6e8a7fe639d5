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

import contextlib
import json
import re
import socket
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
    latency_ms: float = 0
    raw_stop: str | None = None  # exact wire value, e.g. "content_filter" or "RECITATION"


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
reply = Reply  # reply(text, input_tokens=..., output_tokens=..., cached_tokens=0, stop="end", ...)
hang = Hang  # hang(seconds): hold the request, then answer; drives client timeouts


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


def credit_exhausted() -> Fault:
    """Anthropic's 400 for an account out of credit."""
    msg = (
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    )
    return Fault(400, msg + "to upgrade or purchase credits.", type="invalid_request_error")


_QUOTA = "You exceeded your current quota, please check your plan and billing details."


def insufficient_quota() -> Fault:
    """OpenAI's 429 for an account out of quota (not a rate limit)."""
    return Fault(429, _QUOTA, code="insufficient_quota", type="insufficient_quota")


def gemini_quota_exhausted() -> Fault:
    """Gemini's 429 RESOURCE_EXHAUSTED for a used-up daily quota."""
    quota = {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "250"}
    detail = {"@type": _RPC + "QuotaFailure", "violations": [quota]}
    return Fault(429, _QUOTA, type="RESOURCE_EXHAUSTED", details=(detail,))


def rate_limited(retry_after_s: float = 1.0) -> Fault:
    """A 429 rate limit asking to retry after ``retry_after_s`` seconds (Gemini: RetryInfo)."""
    seconds = str(int(retry_after_s)) if float(retry_after_s).is_integer() else str(retry_after_s)
    info = {"@type": _RPC + "RetryInfo", "retryDelay": f"{seconds}s"}
    msg = f"Resource has been exhausted (e.g. check quota). Please retry in {seconds}s."
    gemini = Fault(429, msg, type="RESOURCE_EXHAUSTED", details=(info,))
    return Fault(
        429,
        "Rate limit reached for requests. Please try again later.",
        code="rate_limit_exceeded",
        headers={"retry-after": seconds},
        variants={"google": gemini},
    )


def overloaded() -> Fault:
    """Anthropic's 529 overloaded_error (Gemini and OpenAI: 503 "model is overloaded")."""
    busy = Fault(503, "The model is overloaded. Please try again later.")
    return Fault(529, "Overloaded", variants={"google": busy, "openai": busy})


def server_error(status: int = 500) -> Fault:
    """A 5xx server error."""
    return Fault(status, "Internal server error")


def auth_error() -> Fault:
    """A rejected API key (Gemini answers 400 API_KEY_INVALID, as the real API does)."""
    info = {"@type": _RPC + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
    msg = "API key not valid. Please pass a valid API key."
    gemini = Fault(400, msg, details=(info,))
    return Fault(401, "invalid x-api-key", code="invalid_api_key", variants={"google": gemini})


def model_not_found(model: str = "no-such-model") -> Fault:
    """A 404 for an unknown model."""
    return Fault(404, f"model: {model}", code="model_not_found")


def context_too_long() -> Fault:
    """A 400 for a prompt beyond the model's context window, worded as each provider words it."""
    openai = "This model's maximum context length is 128000 tokens. However, your messages "
    openai += "resulted in 130000 tokens. Please reduce the length of the messages."
    gemini = (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    )
    variants = {
        "openai": Fault(400, openai, code="context_length_exceeded"),
        "google": Fault(400, gemini),
    }
    return Fault(400, "prompt is too long: 210000 tokens > 200000 maximum", variants=variants)


def prompt_blocked() -> Reply:
    """Gemini's blocked prompt (no candidates); a refusal for the other providers."""
    return Reply(text="", stop="blocked", output_tokens=0)


# --- wire formats ------------------------------------------------------------------------------

_STOPS = {  # normalised stop -> wire value
    "anthropic": {"end": "end_turn", "max_tokens": "max_tokens", "refusal": "refusal"},
    "openai": {"end": "stop", "max_tokens": "length", "blocked": "content_filter"},
    "google": {"end": "STOP", "max_tokens": "MAX_TOKENS", "refusal": "SAFETY"},
}
_TYPES = {  # status -> (Anthropic error.type, OpenAI error.type, Gemini error.status)
    400: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    401: ("authentication_error", "invalid_request_error", "UNAUTHENTICATED"),
    402: ("billing_error", "invalid_request_error", "FAILED_PRECONDITION"),
    403: ("permission_error", "invalid_request_error", "PERMISSION_DENIED"),
    404: ("not_found_error", "invalid_request_error", "NOT_FOUND"),
    409: ("conflict_error", "invalid_request_error", "ABORTED"),
    413: ("request_too_large", "invalid_request_error", "INVALID_ARGUMENT"),
    429: ("rate_limit_error", "requests", "RESOURCE_EXHAUSTED"),
    503: ("api_error", "server_error", "UNAVAILABLE"),
    504: ("timeout_error", "server_error", "DEADLINE_EXCEEDED"),
    529: ("overloaded_error", "server_error", "UNAVAILABLE"),
}


def _wire_type(provider: str, status: int) -> str:
    server = ("api_error", "server_error", "INTERNAL")
    default = server if status >= 500 else ("invalid_request_error", "invalid_request_error", "")
    return _TYPES.get(status, default)[PROVIDERS.index(provider)] or "UNKNOWN"


def fault_body(provider: str, fault: Fault) -> dict[str, Any]:
    """The JSON error body ``provider`` sends for ``fault``."""
    f = fault.for_provider(provider)
    etype = f.type or _wire_type(provider, f.status)
    if provider == "anthropic":
        return {"type": "error", "error": {"type": etype, "message": f.message}}
    if provider == "openai":
        return {"error": {"message": f.message, "type": etype, "param": None, "code": f.code}}
    details = list(f.details)
    return {"error": {"code": f.status, "message": f.message, "status": etype, "details": details}}


def reply_body(provider: str, r: Reply, model: str, prompt: str, n: int) -> dict[str, Any]:
    """The JSON body ``provider`` sends for a successful reply ``r``."""
    text = f"fake {provider} answer to: {prompt[:60]}" if r.text is None else r.text
    tokens_in = len(prompt.split()) + r.cached_tokens if r.input_tokens is None else r.input_tokens
    tokens_out = len(text.split()) if r.output_tokens is None else r.output_tokens
    usage = (tokens_in, tokens_out, r.cached_tokens)
    raw = r.raw_stop or _STOPS[provider].get(r.stop, _STOPS[provider].get("refusal", "stop"))
    if provider == "anthropic":
        return _anthropic_reply(text, raw, model, usage, n)
    if provider == "openai":
        return _openai_reply(text, raw, model, usage, n, refused=r.stop == "refusal")
    return _gemini_reply(text, raw, model, usage, n, blocked=r.stop == "blocked")


def _anthropic_reply(text: str, raw: str, model: str, usage: tuple[int, ...], n: int) -> dict:
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
            "input_tokens": tokens_in - cached,  # Anthropic counts cache reads separately
            "output_tokens": tokens_out,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }


def _openai_reply(
    text: str, raw: str, model: str, usage: tuple[int, ...], n: int, refused: bool
) -> dict:
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
    text: str, raw: str, model: str, usage: tuple[int, ...], n: int, blocked: bool
) -> dict:
    tokens_in, tokens_out, cached = usage
    meta = {"promptTokenCount": tokens_in, "candidatesTokenCount": tokens_out}
    meta |= {"totalTokenCount": tokens_in + tokens_out, "cachedContentTokenCount": cached}
    body: dict[str, Any] = {"usageMetadata": meta, "modelVersion": model, "responseId": f"r{n}"}
    if blocked:
        return body | {"promptFeedback": {"blockReason": "SAFETY"}}
    candidate: dict[str, Any] = {"finishReason": raw, "index": 0}
    if text:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    return body | {"candidates": [candidate]}


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


class FakeProviderServer:
    """A ThreadingHTTPServer on 127.0.0.1 speaking the three providers' wire formats."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queues: dict[str, deque[Action]] = {p: deque() for p in PROVIDERS}
        self._defaults: dict[str, Action] = {p: Reply() for p in PROVIDERS}
        self._live: dict[socket.socket, threading.Thread] = {}
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.hits: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def start(self) -> FakeProviderServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _Server(self._address, type("Handler", (_Handler,), {"fake": self}))
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests, close every connection and join every thread."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._lock:
            live = list(self._live.items())
        for conn, _ in live:  # hanging requests end with a dropped connection, not an answer
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._stopping.set()
        httpd.server_close()
        for thread in [self._thread, *(t for _, t in live)]:
            if thread is not None:
                thread.join(timeout=5)

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash) of the running server."""
        if self._httpd is None:
            raise RuntimeError("FakeProviderServer is not running; call start() first")
        return f"http://{self._address[0]}:{self._httpd.server_address[1]}"

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

    def pending(self, provider: str) -> int:
        """How many scripted actions ``provider`` has not consumed yet."""
        with self._lock:
            return len(self._queue(provider))

    def reset(self) -> None:
        """Forget scripts, defaults, hits and recorded requests."""
        with self._lock:
            for p in PROVIDERS:
                self._queues[p].clear()
                self._defaults[p], self.hits[p] = Reply(), 0
            self.requests.clear()

    def _queue(self, provider: str) -> deque[Action]:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        return self._queues[provider]

    def _next(self, provider: str, path: str, body: dict[str, Any]) -> tuple[Action, int]:
        with self._lock:
            self.hits[provider] += 1
            self.requests.append((provider, path, body))
            queue = self._queues[provider]
            return (queue.popleft() if queue else self._defaults[provider]), len(self.requests)

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._live[conn] = threading.current_thread()
            else:
                self._live.pop(conn, None)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, stop()) are expected: stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    fake: FakeProviderServer

    def handle(self) -> None:
        """Serve the connection's requests, tracked so that stop() can close it."""
        self.fake._track(self.connection, True)
        try:
            super().handle()
        finally:
            self.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        """No fake API answers GET."""
        self._send(404, {"error": {"message": f"no fake API at {self.path}"}})

    def do_POST(self) -> None:
        """Route to a provider and perform its next action."""
        length = int(self.headers.get("Content-Length") or 0)
        body = _json_object(self.rfile.read(length) if length else b"")
        target = route(self.path)
        if target is None:
            return self.do_GET()
        provider, model = target
        act, n = self.fake._next(provider, self.path, body)
        if isinstance(act, Hang):
            self.fake._wait(act.seconds)
            act = act.then
        self.fake._wait(act.latency_ms / 1000)
        if isinstance(act, Fault):
            variant = act.for_provider(provider)
            return self._send(variant.status, fault_body(provider, act), variant.headers)
        model = model or str(body.get("model", ""))
        self._send(200, reply_body(provider, act, model, prompt_of(provider, body), n))

    def _send(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
