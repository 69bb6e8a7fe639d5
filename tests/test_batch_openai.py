"""OpenAI batch mode through the real openai SDK (Files + Batches) against the fake.

What both providers share (one batch, resubmission, live fallback, half price, kill -9 while
polling, cancel-batch) runs for OpenAI in ``test_provider_batches``; here are OpenAI's own: the
orphan window a batch ``metadata`` tag closes, lines OpenAI writes or omits, a batch that fails
validation, automatic prompt caching and its batch price, and error mapping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from genai_prices import Usage, calc_price

import nyxnb
from nyxnb.errors import ProviderError
from nyxnb.providers.base import CompletionRequest, Message
from nyxnb.providers.batch_base import CANCELED, ERRORED, EXPIRED, SUCCEEDED, BatchItemResult
from nyxnb.providers.batch_openai import TAG_KEY, OpenAIBatches
from nyxnb.providers.registry import create_provider
from nyxnb.store.seed import seed
from nyxnb.testing import FAKE_KEYS, FakeProviderServer
from nyxnb.testing.batches import FakeBatchServer
from tests.batch_helpers import N_ITEMS, batch_spec, fan_out, ok_items

SHARED = " ".join(f"context{i % 97}" for i in range(2000))  # a 2,000-token shared prefix


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer() as server:
        server.patch_env(monkeypatch)
        yield server


def _request(text: str) -> CompletionRequest:
    return CompletionRequest("You are terse.", (Message("user", text),))


def _with_api(coro_fn):
    """Run ``coro_fn(api)`` with an OpenAI batch API on a fresh provider."""

    async def main():
        provider = create_provider("openai")
        try:
            return await coro_fn(OpenAIBatches(provider))
        finally:
            await provider.aclose()

    return asyncio.run(main())


# --- the orphan window: killed between batch create and the commit of its id -----------------


def test_find_looks_through_every_page_of_batches(srv):
    async def main(api: OpenAIBatches):
        ids = [await api.submit([("c0", _request(f"hi {n}"))], tag=f"row{n}") for n in range(103)]
        return ids, await api.find("row0"), await api.find("row102"), await api.find("nope")

    ids, oldest, newest, missing = _with_api(main)
    assert (oldest, newest, missing) == (ids[0], ids[-1], None)
    assert srv.openai_batches.batches[ids[0]].metadata[TAG_KEY] == "row0"
    assert ("GET", "/v1/batches") in srv.openai_batches.calls


# --- lines OpenAI writes, or does not ---------------------------------------------------------


def test_expired_items_without_a_line_are_resubmitted(sqlite_store, srv):
    seed(sqlite_store)
    srv.openai_batches.expired_lines = False  # an expired request with no error line at all
    srv.openai_batches.plan({2: "expired", 5: "expired"})
    result = nyxnb.run(batch_spec("openai"), tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    _, calls, rows = fan_out(sqlite_store, result.workflow_id)
    assert ok_items(calls) == list(range(N_ITEMS))
    first, second = srv.openai_batches.batches.values()
    assert [r["custom_id"].split("-")[1] for r in second.requests] == ["i2", "i5"]
    assert sorted(c.error_kind for c in calls if c.outcome == "error") == ["expired"] * 2
    assert [r.counts.get("expired") for r in rows] == [2, 0]


def test_result_lines_read_like_live_answers(srv):
    key = FAKE_KEYS["OPENAI_API_KEY"]
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "an answer"}}],
            "usage": {"prompt_tokens": 1500, "completion_tokens": 7, "total_tokens": 1507,
                      "prompt_tokens_details": {"cached_tokens": 1280}}}  # fmt: skip
    too_long = {"message": f"maximum context length exceeded (key {key})", "type":
                "invalid_request_error", "code": "context_length_exceeded"}  # fmt: skip
    lines = {
        "ok": {"response": {"status_code": 200, "body": body}, "error": None},
        "long": {"response": {"status_code": 400, "body": {"error": too_long}}, "error": None},
        "empty": {"response": {"status_code": 200, "body": {"choices": []}}, "error": None},
        "late": {"response": None, "error": {"code": "batch_expired", "message": "expired"}},
        "gone": {"response": None, "error": {"code": "batch_cancelled", "message": "cancelled"}},
    }

    async def main(api: OpenAIBatches) -> dict[str, BatchItemResult]:
        requests = {cid: _request(cid) for cid in lines}
        raw = {cid: json.dumps({"custom_id": cid, **line}) for cid, line in lines.items()}
        return {cid: api._result(text, requests) for cid, text in raw.items()}

    results = _with_api(main)
    ok = results["ok"].completion
    assert results["ok"].outcome == SUCCEEDED and ok is not None
    assert (ok.text, ok.input_tokens, ok.cached_input_tokens, ok.output_tokens) == (
        "an answer", 1500, 1280, 7)  # fmt: skip
    assert ok.model == "gpt-4o-mini" and ok.extra["id"] == "chatcmpl-1"
    long = results["long"]
    assert long.outcome == ERRORED and "context_too_long" in long.error
    assert key not in long.error and "[redacted]" in long.error
    assert results["empty"].outcome == ERRORED
    assert (results["late"].outcome, results["gone"].outcome) == (EXPIRED, CANCELED)


def test_a_batch_that_fails_validation_errors_every_item(srv):
    async def main(api: OpenAIBatches):
        batch_id = await api.submit([("dup", _request("a")), ("dup", _request("b"))])
        status = await api.status(batch_id)
        return status, [r async for r in api.results(batch_id, {"dup": _request("a")})]

    status, results = _with_api(main)
    assert status.ended and status.raw_state == "failed"
    assert [(r.custom_id, r.outcome) for r in results] == [("dup", ERRORED)]
    assert "duplicated" in results[0].error


def test_sdk_errors_map_to_provider_errors(monkeypatch):
    with FakeProviderServer() as plain:  # no batch routes: every Files call is a 404
        plain.patch_env(monkeypatch)
        with pytest.raises(ProviderError) as raised:
            _with_api(lambda api: api.submit([("c0", _request("hi"))]))
    assert raised.value.provider == "openai" and raised.value.kind == "not_found"
    assert "without `batch: true` / `--batch`" in raised.value.hint  # no Batch API there
    assert FAKE_KEYS["OPENAI_API_KEY"] not in str(raised.value)


# --- automatic prompt caching, priced as OpenAI bills it ---------------------------------------


def _cached_spec(batch: bool) -> dict:
    spec = batch_spec("openai", batch, n=6)
    spec["steps"] = spec["steps"][1:]
    spec["steps"][0]["prompt"] = SHARED + "\n\nDesign {{ item.heading }}"
    return spec


@pytest.mark.parametrize("batch", [False, True], ids=["live", "batch"])
def test_shared_prefix_cached_tokens_recorded_and_priced(sqlite_store, monkeypatch, batch):
    seed(sqlite_store)
    with FakeBatchServer(live_caching=True) as srv:
        srv.patch_env(monkeypatch)
        result = nyxnb.run(_cached_spec(batch), tenant="nyx", project="BRbase", store=sqlite_store)
        assert result.ok, result.error
    _, calls, _ = fan_out(sqlite_store, result.workflow_id)
    assert len(calls) == 6 and {c.service_tier for c in calls} == {"batch" if batch else "live"}
    cached = [c.cached_input_tokens for c in calls]
    assert sorted(cached)[0] == 0 and all(n >= 1920 and n % 128 == 0 for n in sorted(cached)[1:])
    context = {"processing": "batch"} if batch else None
    for c in calls:  # each row priced as genai-prices prices the call
        usage = Usage(input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                      cache_read_tokens=c.cached_input_tokens)  # fmt: skip
        usd = calc_price(usage, "gpt-4o-mini", provider_id="openai", price_context=context)
        assert c.cost_usd == pytest.approx(float(usd.total_price), rel=1e-6)
    assert c.model == "gpt-4o-mini"
