"""The asyncio loopback fake: fault modes, rate limits with each provider's headers, routes."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

from nyxnb.testing import (
    FakeProviderServer,
    FakeRequest,
    FakeResponse,
    empty,
    flaky,
    hang,
    html_page,
    malformed,
    reset,
)
from nyxnb.testing.limits import Limit, RateLimits


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch):
    with FakeProviderServer() as server:
        server.patch_env(monkeypatch)
        yield server


def _openai() -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(max_retries=0, timeout=60)


async def _ask_openai(client: openai.AsyncOpenAI, prompt: str = "hi") -> object:
    return await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )


def test_many_concurrent_hanging_requests_cost_no_threads_and_stop_drops_them(srv) -> None:
    srv.set_default("openai", hang(300))

    async def go() -> list[BaseException | object]:
        client = _openai()
        calls = [_ask_openai(client, f"p{i}") for i in range(50)]
        task = asyncio.gather(*calls, return_exceptions=True)
        for _ in range(200):  # every request has reached the fake (slower on a loaded machine)
            if srv.hits["openai"] == 50:
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(srv.stop)
        return await task

    started = time.perf_counter()
    results = asyncio.run(go())
    assert time.perf_counter() - started < 60  # dropped by stop(), not answered by the 300 s hang
    assert all(isinstance(r, openai.APIConnectionError) for r in results)
    assert srv.hits["openai"] == 50


def test_malformed_html_empty_and_reset_reach_the_sdk_as_such(srv) -> None:
    srv.script("openai", malformed(), html_page(), empty(), reset())

    async def go() -> list[object]:
        client = _openai()
        out: list[object] = []
        for _ in range(4):
            try:
                raw = await _ask_openai(client)
                out.append(raw.http_response.headers["content-type"])  # type: ignore[attr-defined]
                out.append(raw.http_response.text)  # type: ignore[attr-defined]
            except openai.APIConnectionError as exc:
                out.append(type(exc))
        return out

    ctype1, body1, ctype2, body2, ctype3, body3, dropped = asyncio.run(go())
    with pytest.raises(ValueError):
        json.loads(str(body1))
    assert str(ctype2).startswith("text/html") and "<html>" in str(body2)
    assert json.loads(str(body3))["choices"][0]["message"]["content"] == ""
    assert dropped is openai.APIConnectionError
    assert ctype1 == ctype3 == "application/json"


def test_flaky_fails_each_prompt_first_n_times(srv) -> None:
    srv.set_default("anthropic", flaky(1))
    client = anthropic.Anthropic(max_retries=0)
    for prompt in ("a", "b"):
        with pytest.raises(anthropic.InternalServerError):
            client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": prompt}]
            )
        ok = client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": prompt}]
        )
        assert ok.content[0].text.startswith("fake anthropic answer")


def test_openai_limits_send_x_ratelimit_headers_and_a_rate_limit_429(srv) -> None:
    srv.limit("openai", rpm=120, tpm=1_000_000)  # 2 per second, a burst of 2
    client = openai.OpenAI(max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "120"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000000"
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "rate_limit_exceeded"
    assert "Please try again in" in caught.value.message
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert srv.throttled["openai"] == 1 and srv.hits["openai"] == 2
    other = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}]
    )
    assert other.headers["x-ratelimit-remaining-requests"] == "1"  # per model


def test_anthropic_limits_send_ratelimit_headers_and_retry_after(srv) -> None:
    srv.limit("anthropic", rpm=60, tpm=100_000, output_tpm=50_000)
    client = anthropic.Anthropic(max_retries=0)
    msg = [{"role": "user", "content": "hi"}]
    raw = client.messages.with_raw_response.create(model="m", max_tokens=5, messages=msg)
    for part in ("requests", "input-tokens", "output-tokens", "tokens"):
        assert f"anthropic-ratelimit-{part}-limit" in raw.headers
        reset = raw.headers[f"anthropic-ratelimit-{part}-reset"]
        assert reset.endswith("Z") and "." not in reset  # whole seconds, as the real API sends
    assert raw.headers["anthropic-ratelimit-tokens-limit"] == "150000"  # input + output
    assert "retry-after" in raw.headers and "date" in raw.headers  # on a 200 too, as recorded
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="m", max_tokens=5, messages=msg)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.type == "rate_limit_error"


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_limits_without_hints_send_bare_429s(srv, provider) -> None:
    limits = RateLimits()
    limits.set(provider, Limit(rpm=60, hints=False))
    assert limits.admit(provider, "m", 1, 1).headers == {}  # no rate headers on answers
    verdict = limits.admit(provider, "m", 1, 1)
    assert verdict.fault is not None and verdict.headers == {}
    fault = verdict.fault.for_provider(provider)
    assert fault.status == 429 and not fault.headers and not fault.details
    assert "try again in" not in fault.message.lower() and "retry in" not in fault.message


def test_gemini_limit_is_resource_exhausted_with_retry_info(srv) -> None:
    srv.limit("google", rpm=60)
    client = genai.Client()
    client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    details = caught.value.details["error"]["details"]
    delay = next(d["retryDelay"] for d in details if d["@type"].endswith("RetryInfo"))
    assert 0 < float(delay.removesuffix("s")) <= 1.0


def test_latency_range_and_added_routes(srv) -> None:
    async def batches(request: FakeRequest) -> FakeResponse:
        return FakeResponse(200, {"id": "batch_1", "seen": request.json()})

    srv.add_route("POST", r"/v1/batches$", batches)
    srv.set_latency("openai", (150, 200))
    started = time.perf_counter()
    r = httpx.post(f"{srv.url}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 200 and time.perf_counter() - started >= 0.15
    r = httpx.post(f"{srv.url}/v1/batches", json={"a": 1})
    assert r.json() == {"id": "batch_1", "seen": {"a": 1}}
