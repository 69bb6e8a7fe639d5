"""The three SDK providers, through the real SDKs, against the loopback fake provider server."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from nyxnb.errors import MissingKey, ProviderError, ProviderRefused, ProviderUnavailable
from nyxnb.providers import Completion, CompletionRequest, create_provider
from nyxnb.providers.classify import HttpFailure, classify, retry_after
from nyxnb.testing import (
    FAKE_KEYS,
    FakeProviderServer,
    Fault,
    auth_error,
    context_too_long,
    credit_exhausted,
    error,
    gemini_quota_exhausted,
    hang,
    insufficient_quota,
    model_not_found,
    overloaded,
    prompt_blocked,
    rate_limited,
    reply,
    server_error,
)

PROVIDERS = ("anthropic", "openai", "google")
KEY_VARS = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "google": "GEMINI_API_KEY",
}
_RPC = "type.googleapis.com/google.rpc."


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    """A running fake provider server with every SDK pointed at it (fake keys included)."""
    with FakeProviderServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv


def calls(provider: str, n: int, prompt: str = "Say hello", *, timeout_s: float = 5.0, **kw: Any):
    """``n`` sequential ``complete`` calls on one provider instance: answers or ProviderErrors."""

    async def go() -> list[Completion | ProviderError]:
        p = create_provider(provider, {"timeout_s": timeout_s})
        out: list[Completion | ProviderError] = []
        try:
            for _ in range(n):
                try:
                    out.append(
                        await p.complete(CompletionRequest.of("You are terse.", prompt, **kw))
                    )
                except ProviderError as exc:
                    out.append(exc)
        finally:
            await p.aclose()
        return out

    return asyncio.run(go())


def complete(provider: str, prompt: str = "Say hello", **kw: Any) -> Completion:
    """One successful ``complete`` call on a fresh provider instance."""
    (done,) = calls(provider, 1, prompt, **kw)
    assert isinstance(done, Completion), done
    return done


def failure(provider: str, **kw: Any) -> ProviderError:
    """The ProviderError one ``complete`` call on a fresh provider instance raises."""
    (err,) = calls(provider, 1, **kw)
    assert isinstance(err, ProviderError), err
    return err


# --- normal replies ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reply_has_exact_text_and_token_counts(fake_server, provider):
    fake_server.script(
        provider,
        reply("hello there", input_tokens=123, output_tokens=45),
        reply("cached", input_tokens=1000, output_tokens=5, cached_tokens=800),
    )
    plain, cached = calls(provider, 2)
    assert isinstance(plain, Completion) and isinstance(cached, Completion)
    assert plain.text == "hello there"
    assert (plain.input_tokens, plain.output_tokens, plain.cached_input_tokens) == (123, 45, 0)
    assert (plain.stop_reason, plain.provider) == ("end", provider)
    assert plain.model == create_provider(provider).default_model
    assert (cached.input_tokens, cached.output_tokens, cached.cached_input_tokens) == (1000, 5, 800)
    assert fake_server.hits[provider] == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_default_reply_is_deterministic(fake_server, provider):
    first, second = calls(provider, 2, "Summarise the repository layout")
    assert isinstance(first, Completion)
    assert first.text == f"fake {provider} answer to: Summarise the repository layout"
    assert first == second
    assert first.input_tokens > 0 and first.output_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_request_carries_model_system_prompt_and_parameters(fake_server, provider):
    complete(provider, "the prompt", model="some-model", max_tokens=77, temperature=0.25)
    ((name, path, body),) = fake_server.requests
    assert name == provider
    text = json.dumps(body)
    assert "You are terse." in text and "the prompt" in text
    assert "some-model" in path + text
    assert "77" in text and "0.25" in text


# Every live call streams: Gemini through streamGenerateContent?alt=sse.
def test_sdk_paths(fake_server):
    for provider in PROVIDERS:
        complete(provider)
    paths = [path for _, path, _ in fake_server.requests]
    assert paths == [
        "/v1/messages",
        "/v1/chat/completions",
        "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    ]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_client_is_created_once_per_instance(fake_server, provider):
    async def go() -> None:
        p = create_provider(provider)
        await p.complete(CompletionRequest.of("", "one"))
        client = p._client  # type: ignore[attr-defined]
        await p.complete(CompletionRequest.of("", "two"))
        assert p._client is client  # type: ignore[attr-defined]
        await p.aclose()

    asyncio.run(go())
    assert fake_server.hits[provider] == 2


# --- errors ------------------------------------------------------------------------------------

NATIVE_EXHAUSTION = {
    "anthropic": credit_exhausted,
    "openai": insufficient_quota,
    "google": gemini_quota_exhausted,
}
ERROR_CASES: list[tuple[str, Any, type[ProviderError]]] = [
    ("exhausted", None, ProviderRefused),  # each provider's own exhaustion body
    ("exhausted", credit_exhausted, ProviderRefused),  # and the other providers' bodies
    ("exhausted", insufficient_quota, ProviderRefused),
    ("exhausted", gemini_quota_exhausted, ProviderRefused),
    ("auth", auth_error, ProviderRefused),
    ("auth", lambda: error(403, "Permission denied"), ProviderRefused),
    ("not_found", model_not_found, ProviderRefused),
    ("bad_request", lambda: error(400, "max_tokens: must be positive"), ProviderRefused),
    ("bad_request", lambda: error(422, "unprocessable"), ProviderRefused),
    ("context_too_long", context_too_long, ProviderRefused),
    ("rate_limited", lambda: rate_limited(3), ProviderUnavailable),
    ("overloaded", overloaded, ProviderUnavailable),
    ("server", server_error, ProviderUnavailable),
    ("server", lambda: server_error(502), ProviderUnavailable),
]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_error_kinds(fake_server, provider):
    fake_server.script(
        provider, *((make or NATIVE_EXHAUSTION[provider])() for _, make, _ in ERROR_CASES)
    )
    results = calls(provider, len(ERROR_CASES))
    got = [(type(r).__name__, getattr(r, "kind", None)) for r in results]
    assert got == [(cls.__name__, kind) for kind, _, cls in ERROR_CASES]
    assert all(isinstance(r, ProviderError) and r.provider == provider and r.hint for r in results)
    assert fake_server.hits[provider] == len(ERROR_CASES)  # SDK retries are off, even 429 and 5xx


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_is_parsed(fake_server, provider):
    fake_server.script(
        provider, rate_limited(7), error(429, "slow down", headers={"retry-after-ms": "1500"})
    )
    seconds, millis = calls(provider, 2)
    assert isinstance(seconds, ProviderError) and isinstance(millis, ProviderError)
    assert (seconds.kind, seconds.retry_after) == ("rate_limited", 7.0)
    assert (millis.kind, millis.retry_after) == ("rate_limited", 1.5)


def test_gemini_per_minute_quota_is_a_rate_limit(fake_server):
    per_minute = {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}
    fault = Fault(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        type="RESOURCE_EXHAUSTED",
        details=(
            {"@type": _RPC + "QuotaFailure", "violations": [per_minute]},
            {"@type": _RPC + "RetryInfo", "retryDelay": "12s"},
        ),
    )
    fake_server.script("google", fault)
    err = failure("google")
    assert (err.kind, err.retry_after) == ("rate_limited", 12.0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_timeout(fake_server, provider):
    fake_server.script(provider, hang(5))
    err = failure(provider, timeout_s=0.3)
    assert type(err) is ProviderUnavailable
    assert err.kind == "timeout"
    assert fake_server.hits[provider] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_connection_error(monkeypatch, provider):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", dead)
    monkeypatch.setenv("OPENAI_BASE_URL", dead + "/v1")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", dead)
    monkeypatch.setenv(KEY_VARS[provider], FAKE_KEYS[KEY_VARS[provider]])
    err = failure(provider)
    assert type(err) is ProviderUnavailable
    assert err.kind == "connection"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_names_the_variable(provider):
    with pytest.raises(MissingKey) as info:
        calls(provider, 1)
    assert KEY_VARS[provider] in str(info.value)
    if provider == "google":
        assert "GOOGLE_API_KEY" in str(info.value)


def test_google_accepts_google_api_key(fake_server, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", "fake-google-key-1234567890")
    assert complete("google").stop_reason == "end"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_api_key_never_in_error(fake_server, provider):
    key = FAKE_KEYS[KEY_VARS[provider]]
    echo = error(401, f"Incorrect API key provided: {key}")
    fake_server.script(provider, echo, auth_error(), rate_limited(), server_error())
    errors = calls(provider, 4)
    assert all(isinstance(e, ProviderError) for e in errors)
    for err in errors:
        assert key not in str(err) and key not in repr(err) and key not in err.message
    assert "[redacted]" in str(errors[0])


# --- truncated and refused answers -------------------------------------------------------------

STOP_CASES = {  # provider -> [(raw wire stop or None, scripted stop, expected stop)]
    "anthropic": [
        ("model_context_window_exceeded", "end", "max_tokens"),
        ("stop_sequence", "end", "end"),
    ],
    "openai": [("content_filter", "end", "refusal"), ("tool_calls", "end", "end")],
    "google": [(r, "end", "refusal") for r in ("RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST")],
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_truncated_and_refused_answers_are_returned(fake_server, provider):
    cases = [
        (None, "max_tokens", "max_tokens"),
        (None, "refusal", "refusal"),
        *STOP_CASES[provider],
    ]
    fake_server.script(
        provider,
        *(
            reply("partial answ", output_tokens=9, stop=stop, raw_stop=raw)
            for raw, stop, _ in cases
        ),
        prompt_blocked(),
    )
    *answers, blocked = calls(provider, len(cases) + 1)
    for (raw, _, expected), done in zip(cases, answers, strict=True):
        assert isinstance(done, Completion)
        assert (done.stop_reason, done.output_tokens) == (expected, 9), raw
        assert done.raw_stop_reason and done.raw_stop_reason == (raw or done.raw_stop_reason)
    assert isinstance(blocked, Completion)
    assert (blocked.stop_reason, blocked.text) == ("refusal", "")


# --- classification details --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure_", "kind"),
    [
        (HttpFailure(402, "payment required"), "exhausted"),
        (HttpFailure(429, "limit", code="enforced_spend_limit_reached"), "exhausted"),
        (
            HttpFailure(400, "User location is not supported", error_type="FAILED_PRECONDITION"),
            "auth",
        ),
        (HttpFailure(400, "x", error_type="INVALID_ARGUMENT", code="API_KEY_INVALID"), "auth"),
        (HttpFailure(413, "request_too_large"), "context_too_long"),
        (HttpFailure(408, "request timeout"), "timeout"),
        (HttpFailure(409, "conflict"), "server"),
        (HttpFailure(503, "Service Unavailable"), "server"),
        (HttpFailure(429, "Resource has been exhausted (e.g. check quota)."), "rate_limited"),
        (HttpFailure(429, "exceeded your current quota"), "exhausted"),  # no retry hint
        (HttpFailure(429, "exceeded your current quota. Please retry in 9s."), "rate_limited"),
    ],
)
def test_classify(failure_, kind):
    assert classify(failure_) == kind


def test_retry_after_sources():
    assert retry_after(HttpFailure(429, headers={"Retry-After": "2"})) == 2.0
    assert retry_after(HttpFailure(429, headers={"retry-after-ms": "250"})) == 0.25
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: retry now
    assert retry_after(HttpFailure(429, headers={"retry-after": date})) == 0.0
    info = {"@type": _RPC + "RetryInfo", "retryDelay": "1.5s"}
    assert retry_after(HttpFailure(429, details=[info])) == 1.5
    assert retry_after(HttpFailure(429, "Please retry in 3.25s.")) == 3.25
    assert retry_after(HttpFailure(429, "no hint")) is None


# --- registry and imports ----------------------------------------------------------------------


def test_registry_creates_sdk_providers():
    for name in PROVIDERS:
        provider = create_provider(name, {"timeout_s": 3})
        assert provider.name == name
        assert provider.options.timeout_s == 3


def test_import_nyxnb_imports_no_sdk():
    code = (
        "import sys, nyxnb, nyxnb.providers, nyxnb.testing\n"
        "bad = [m for m in ('anthropic', 'openai', 'google.genai') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the fake server itself --------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_fake_server_gemini_version_prefixes_and_unknown_paths():
    with FakeProviderServer() as srv:
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        for version in ("v1", "v1beta", "v1alpha"):
            status, answer = _post(f"{srv.url}/{version}/models/gemini-x:generateContent", body)
            assert status == 200 and answer["candidates"][0]["finishReason"] == "STOP"
        assert _post(f"{srv.url}/nowhere", {})[0] == 404
        assert srv.hits == {"anthropic": 0, "openai": 0, "google": 3}


def test_fake_server_script_then_default_then_reset():
    with FakeProviderServer() as srv:
        srv.set_default("anthropic", credit_exhausted())
        srv.script("anthropic", reply("scripted"))
        url = f"{srv.url}/v1/messages"
        msg = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
        assert _post(url, msg)[1]["content"][0]["text"] == "scripted"
        for _ in range(2):
            status, body = _post(url, msg)
            assert status == 400 and body["error"]["type"] == "invalid_request_error"
        assert srv.pending("anthropic") == 0 and srv.hits["anthropic"] == 3
        srv.reset()
        assert _post(url, msg)[0] == 200
        assert len(srv.requests) == 1
        with pytest.raises(ValueError):
            srv.script("mistral", reply())


def test_fake_server_stops_cleanly_while_a_request_hangs():
    before = set(threading.enumerate())
    srv = FakeProviderServer().start()
    srv.script("openai", hang(30))
    url = f"{srv.url}/v1/chat/completions"
    worker = threading.Thread(target=_post_ignoring_errors, args=(url,), daemon=True)
    worker.start()
    while srv.hits["openai"] == 0:
        threading.Event().wait(0.01)
    srv.stop()
    worker.join(5)
    assert not worker.is_alive()
    assert set(threading.enumerate()) <= before
    srv.stop()  # idempotent


def _post_ignoring_errors(url: str) -> None:
    try:
        _post(url, {"model": "m", "messages": []})
    except (OSError, http.client.HTTPException):
        pass  # the server dropped the connection: expected


def test_fake_server_env_points_every_sdk_at_it():
    with FakeProviderServer() as srv:
        env = srv.env()
        assert env["OPENAI_BASE_URL"] == srv.url + "/v1"
        assert env["ANTHROPIC_BASE_URL"] == env["GOOGLE_GEMINI_BASE_URL"] == srv.url
        assert set(FAKE_KEYS) <= set(env)
