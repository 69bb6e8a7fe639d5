"""Conformance: real recorded exchanges, replayed verbatim to the official SDKs.

Every file of ``tests/recordings`` (sources in its ``SOURCES.md``) is served as recorded by a
loopback server (``tests/replay.py``) and read by nyxnb as a live call would read it:

- streamed answers (Anthropic message events, OpenAI chunks with ``include_usage``, Gemini
  ``alt=sse``) through ``Provider.complete``: text, tokens (cache reads and writes, thinking and
  reasoning tokens, Gemini thoughts) and rate headers;
- whole answers (what the batch APIs return per item) through the SDK's unstreamed call and the
  same ``completion_of`` the batch path uses;
- every error through ``Provider.complete``: the kind and class nyxnb assigns, and the retry hint.

Costs are checked against genai-prices wherever it knows the model.  The two Gemini streams
recorded without ``alt=sse`` (a JSON array) are re-framed as SSE, one event per array element,
since the SDK asks for ``alt=sse``; every other body is byte for byte as recorded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from replay import RECORDINGS, Recording, ReplayServer

from nyxnb.engine.calls.chain import attempt_from
from nyxnb.errors import ProviderError, ProviderRefused, ProviderUnavailable
from nyxnb.providers import anthropic as anthropic_mod
from nyxnb.providers import google as google_mod
from nyxnb.providers import openai as openai_mod
from nyxnb.providers.base import Completion, CompletionRequest
from nyxnb.providers.registry import create_provider
from nyxnb.rates import RateInfo
from nyxnb.testing import fault_body, rate_limited
from nyxnb.testing.faults import RATE_LIMIT_SOURCES


@pytest.fixture(scope="module")
def replay():
    with ReplayServer() as server:
        yield server


@pytest.fixture
def served(replay, monkeypatch):
    for name, value in replay.env().items():
        monkeypatch.setenv(name, value)
    return replay


def _model(rec: Recording) -> str:
    path = str(rec.request.get("path") or "")
    if rec.provider == "google" and "/models/" in path:
        return path.split("/models/")[1].split(":")[0]
    return rec.requested_model() or ""


def _request(rec: Recording) -> CompletionRequest:
    model = _model(rec) if "{model}" not in _model(rec) else ""
    return CompletionRequest.of("", "hello", model=model or None)


def stream(served: ReplayServer, rec: Recording) -> Completion:
    """A live (streamed) call answered by ``rec``."""
    served.recording = rec

    async def go() -> Completion:
        prov = create_provider(rec.provider)
        try:
            return await prov.complete(_request(rec))
        finally:
            await prov.aclose()

    return asyncio.run(go())


def whole(served: ReplayServer, rec: Recording) -> Completion:
    """An unstreamed call answered by ``rec``, read as the batch path reads an item."""
    served.recording = rec

    async def go() -> Completion:
        prov: Any = create_provider(rec.provider)
        request = _request(rec)
        model = prov.model_for(request)
        try:
            client = prov.client()
            if rec.provider == "anthropic":
                message = await client.messages.create(**prov.params(request))
                return anthropic_mod.completion_of(message, model, "anthropic")
            if rec.provider == "openai":
                response = await client.chat.completions.create(**prov.params(request))
                return openai_mod.completion_of(response, model, "openai")
            answer = await client.aio.models.generate_content(
                model=model,
                contents=google_mod.contents_of(request),
                config=google_mod.config_of(request),
            )
            return google_mod.completion_of(answer, model, "google")
        finally:
            await prov.aclose()

    return asyncio.run(go())


def _sse_text(rec: Recording) -> str:
    """The visible text of a recorded stream, read independently of nyxnb."""
    parts = []
    for line in rec.body.splitlines():
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        data = json.loads(line[5:])
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            parts.append(delta["text"])
        for choice in data.get("choices") or []:
            parts.append(choice["delta"].get("content") or "")
        for candidate in data.get("candidates") or []:
            for part in (candidate.get("content") or {}).get("parts") or []:
                parts.append("" if part.get("thought") else part.get("text", ""))
    return "".join(parts)


# name -> (input, output, cache reads, cache writes, reasoning) tokens
STREAMED = {
    "anthropic/messages_stream_plain_sse_with_ratelimit_headers": (17, 10, 0, 0, 0),
    # Anthropic does not count thinking apart: estimated from its text, 4 characters a token
    "anthropic/messages_stream_thinking_signature": (46, 84, 0, 0, 55),
    "openai/chat_stream_include_usage": (78, 9, 0, 0, 0),
    "openai/chat_stream_include_usage_with_ratelimit_headers": (87, 26, 0, 0, 0),
    "google/stream_generate_content_sse_plain": (13, 8, 0, 0, 0),
    "google/stream_generate_content_json_array_plain": (2, 9 + 179, 0, 0, 179),
    "google/stream_generate_content_json_array_thinking": (11, 2 + 291, 0, 0, 291),
}


@pytest.mark.parametrize("name", sorted(STREAMED))
def test_streamed_answers(served, name):
    rec = Recording.load(name)
    rec = rec.as_sse() if "json_array" in name else rec
    answer = stream(served, rec)
    tokens = (
        answer.input_tokens,
        answer.output_tokens,
        answer.cached_input_tokens,
        answer.cache_write_tokens,
        answer.reasoning_tokens,
    )
    assert tokens == STREAMED[name]
    assert answer.text == _sse_text(rec) and answer.text.strip()
    assert answer.stop_reason == "end"
    _check_cost(answer)


def test_the_thinking_is_never_the_answer(served):
    claude = stream(served, Recording.load("anthropic/messages_stream_thinking_signature"))
    gemini = stream(
        served, Recording.load("google/stream_generate_content_json_array_thinking").as_sse()
    )
    assert "thinking" not in claude.text.lower() and claude.text.startswith("-")
    assert gemini.text.strip() == "Scoop"  # the thought summary part is not text


def test_anthropic_rate_headers_reset_before_date_mean_now(served):
    answer = stream(
        served, Recording.load("anthropic/messages_stream_plain_sse_with_ratelimit_headers")
    )
    # resets read 23:44:11Z in an answer dated 23:44:12 GMT: whole seconds, already past
    assert answer.rate == RateInfo(20000, 19999, 0.0, 2000000, 2000000, 0.0)


def test_openai_rate_headers_are_read_from_a_stream(served):
    answer = stream(
        served, Recording.load("openai/chat_stream_include_usage_with_ratelimit_headers")
    )
    rate = answer.rate
    assert rate is not None and rate.requests_limit and rate.tokens_limit
    assert rate.requests_reset_s == pytest.approx(0.002) and rate.tokens_reset_s == 0.0


WHOLE = {
    "anthropic/messages_nonstream_plain": (20, 10, 0, 0, 0),
    "anthropic/messages_nonstream_cache_write_and_read": (3 + 1111 + 418, 33, 1111, 418, 0),
    "anthropic/messages_nonstream_thinking_signature": (43, 321, 0, 0, 34),  # estimated
    "openai/chat_nonstream_plain_with_ratelimit_headers": (146, 3, 0, 0, 0),
    "openai/chat_nonstream_cached_tokens": (4020, 4, 4012, 0, 0),
    "openai/chat_nonstream_reasoning_tokens": (7, 87, 0, 0, 64),
    "google/generate_content_plain": (9, 9 + 34, 0, 0, 34),
    "google/generate_content_implicit_cache_cachedContentTokenCount": (
        17713,
        68 + 821,
        17379,
        0,
        821,
    ),
}


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_whole_answers(served, name):
    rec = Recording.load(name)
    answer = whole(served, rec)
    tokens = (
        answer.input_tokens,
        answer.output_tokens,
        answer.cached_input_tokens,
        answer.cache_write_tokens,
        answer.reasoning_tokens,
    )
    assert tokens == WHOLE[name]
    body = json.loads(rec.body)
    texts = [b["text"] for b in body.get("content", []) if b.get("type") == "text"]
    texts += [c["message"]["content"] for c in body.get("choices", [])]
    texts += [p["text"] for c in body.get("candidates", []) for p in c["content"]["parts"]]
    assert answer.text == "".join(texts) and answer.stop_reason == "end"
    _check_cost(answer)


def _check_cost(answer: Completion) -> None:
    """The ledger's cost of an answer is genai-prices' price of its usage (when it knows it)."""
    from genai_prices import Usage, calc_price

    cost = attempt_from(answer.provider, answer.model, 1, answer, 0.0).cost_usd
    usage = Usage(
        input_tokens=answer.input_tokens,
        cache_read_tokens=answer.cached_input_tokens,
        cache_write_tokens=answer.cache_write_tokens,
        output_tokens=answer.output_tokens,
    )
    try:
        price = calc_price(usage, model_ref=answer.model, provider_id=answer.provider)
    except LookupError:
        assert cost >= 0  # a model genai-prices does not know: the pricing table's default
        return
    assert cost == pytest.approx(float(price.total_price), rel=1e-6, abs=1e-12)


# name -> (kind, class, retry_after)
REFUSED, BUSY = ProviderRefused, ProviderUnavailable
ERRORS = {
    "anthropic/error_400_credit_balance_too_low": ("exhausted", REFUSED, None),
    "anthropic/error_401_authentication_error": ("auth", REFUSED, None),
    "anthropic/error_404_not_found_model": ("not_found", REFUSED, None),
    "anthropic/error_429_rate_limit_error_body": ("rate_limited", BUSY, None),
    "anthropic/error_429_rate_limit_headers": ("rate_limited", BUSY, 16.0),
    "anthropic/error_429_requests_exhausted_no_retry_after_2024": ("rate_limited", BUSY, None),
    "anthropic/error_500_api_error": ("server", BUSY, None),
    "anthropic/error_529_overloaded_error_request_id": ("overloaded", BUSY, None),
    "anthropic/error_529_overloaded_error_with_headers": ("overloaded", BUSY, None),
    "openai/error_401_invalid_api_key": ("auth", REFUSED, None),
    "openai/error_404_model_not_found": ("not_found", REFUSED, None),
    "openai/error_429_headers_without_ratelimit": ("rate_limited", BUSY, None),
    "openai/error_429_insufficient_quota": ("exhausted", REFUSED, None),
    "openai/error_429_rate_limit_exceeded_rpd": ("rate_limited", BUSY, 8.64),
    "openai/error_429_rate_limit_rpm_legacy": ("rate_limited", BUSY, 20.0),
    "openai/error_500_server_error": ("server", BUSY, None),
    "openai/error_503_model_overloaded": ("overloaded", BUSY, None),
    "google/error_400_api_key_invalid": ("auth", REFUSED, None),
    "google/error_400_invalid_argument": ("bad_request", REFUSED, None),
    "google/error_403_permission_denied_leaked_key": ("auth", REFUSED, None),
    "google/error_403_permission_denied_unregistered_callers": ("auth", REFUSED, None),
    "google/error_404_not_found_model": ("not_found", REFUSED, None),
    "google/error_429_quota_failure_per_day": ("exhausted", REFUSED, None),
    "google/error_429_quota_failure_retryinfo_per_minute": ("rate_limited", BUSY, 26.0),
    "google/error_429_resource_exhausted_no_details": ("rate_limited", BUSY, None),
    "google/error_429_resource_exhausted_try_again_later_array": ("rate_limited", BUSY, None),
    "google/error_500_internal": ("server", BUSY, None),
    "google/error_503_unavailable_high_demand": ("server", BUSY, None),
    "google/error_503_unavailable_overloaded": ("overloaded", BUSY, None),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_are_classified(served, name):
    kind, cls, hint = ERRORS[name]
    with pytest.raises(ProviderError) as caught:
        stream(served, Recording.load(name))
    error = caught.value
    assert (error.kind, type(error)) == (kind, cls), error
    assert error.retry_after == (pytest.approx(hint) if hint is not None else None)
    if name.endswith("per_day"):
        assert "a daily quota: it resets at" in error.message  # falls back, says when
    assert "REDACTED" not in str(error) or "sk-REDACTED" in str(error)


_HINT_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")


def _rate_headers(headers: dict[str, str]) -> set[str]:
    names = {k.lower() for k in headers}
    return {n for n in names if n in _HINT_HEADERS or "ratelimit" in n}


@pytest.mark.parametrize("provider", ["anthropic", "openai", "google"])
def test_the_fakes_default_429_follows_the_recordings_it_cites(served, provider):
    body_of, headers_of = (Recording.load(n) for n in RATE_LIMIT_SOURCES[provider])
    fault = rate_limited().for_provider(provider)
    body = fault_body(provider, rate_limited())
    recorded = json.loads(body_of.body)
    if provider == "google":
        assert body["error"]["status"] == recorded["error"]["status"]
        assert ("details" in body["error"]) == ("details" in recorded["error"])
    else:
        assert body["error"]["type"] == recorded["error"]["type"]
    if provider == "openai":
        assert body["error"]["code"] == recorded["error"]["code"]
    assert set(fault.headers) <= _rate_headers(headers_of.headers)
    assert {h for h in fault.headers if h.startswith("retry")} == {
        h for h in _rate_headers(headers_of.headers) if h.startswith("retry")
    }
    # served to the SDK, it reads as the recordings do: a rate limit, hinted or not alike
    mine = Recording("fake", provider, 429, dict(fault.headers), json.dumps(body))
    with pytest.raises(ProviderError) as caught:
        stream(served, mine)
    hinted = any(ERRORS[name][2] is not None for name in RATE_LIMIT_SOURCES[provider])
    assert caught.value.kind == "rate_limited"
    assert (caught.value.retry_after is not None) == hinted


@pytest.mark.parametrize("provider", ["anthropic", "openai", "google"])
def test_an_explicit_hint_is_sent_by_every_provider(served, provider):
    fault = rate_limited(2)
    body = json.dumps(fault_body(provider, fault))
    mine = Recording("fake", provider, 429, dict(fault.for_provider(provider).headers), body)
    with pytest.raises(ProviderError) as caught:
        stream(served, mine)
    assert (caught.value.kind, caught.value.retry_after) == ("rate_limited", 2.0)


def test_every_recording_is_replayed():
    files = {
        p.relative_to(RECORDINGS).with_suffix("").as_posix() for p in RECORDINGS.glob("*/*.json")
    }
    assert files == set(STREAMED) | set(WHOLE) | set(ERRORS)
    sources = (RECORDINGS / "SOURCES.md").read_text(encoding="utf-8")
    assert all(f"`{name}.json`" in sources for name in files)
