"""Gemini batch mode through the real google-genai SDK against the fake's batch endpoints.

The scenarios every batch API shares (one batch, resubmission, live fallback, half price, kill -9
then resume, cancel-batch) run for ``google`` in ``tests/test_provider_batches.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import nyxnb
from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.batch_google import INLINE_LIMIT_BYTES, GoogleBatches
from nyxnb.providers.pricing import price_for
from nyxnb.providers.registry import batch_api, create_provider
from nyxnb.store.seed import seed
from nyxnb.testing import FAKE_KEYS
from nyxnb.testing.batches import FakeBatchServer
from nyxnb.testing.batches_google import FakeGeminiBatches
from tests.batch_helpers import N_ITEMS, batch_spec, fan_out, ok_items

MODEL = "gemini-2.5-flash"
FIRST = "batches/fakegem0001"


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer() as server:
        server.patch_env(monkeypatch)
        yield server


def _run(store, spec=None):
    result = nyxnb.run(spec or batch_spec("google"), tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    return result


def _keys(fake: FakeGeminiBatches, n: int) -> list[str]:
    """The item indexes (``i3``) of the ``n``-th batch the fake received."""
    batch = list(fake.batches.values())[n]
    return [r["metadata"]["key"].split("-")[1] for r in batch.requests]


def test_registry_gives_google_a_batch_api() -> None:
    assert isinstance(batch_api(create_provider("google")), GoogleBatches)


def test_gemini_batch_wire_format_and_ledger(sqlite_store, srv):
    """The generic scenarios run for google in test_provider_batches; here: Gemini's shapes."""
    seed(sqlite_store)
    result = _run(sqlite_store)
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"}
    assert ok_items(calls) == list(range(N_ITEMS))
    assert [(b.provider, b.batch_id, b.state) for b in batches] == [("google", FIRST, "ended")]
    assert {(c.batch_id, c.service_tier, c.model) for c in calls} == {(FIRST, "batch", MODEL)}
    assert all(i.output.startswith("fake google answer to: Design Feature") for i in items)
    sent = srv.gemini_batches.batches[FIRST]
    assert sent.metadata["model"] == MODEL and sent.metadata["displayName"].startswith("nyxnb-")
    first = sent.requests[0]["request"]
    assert first["systemInstruction"]["parts"][0]["text"] and first["generationConfig"]
    types = [e.type for e in result.events]
    assert "batch_submitted" in types and "batch_ended" in types
    assert srv.hits["google"] == 1  # only the analysis step went live
    assert all(path.startswith("/v1beta/") for _, path in srv.gemini_batches.calls)


def test_gemini_batch_prices_are_genai_prices_batch_tier():
    """Batch halves input and output; Gemini's cache reads stay at the standard cached rate."""
    from genai_prices import Usage, calc_price

    for model in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite"):
        price = price_for("google", model)
        assert price.source == "genai-prices" and price.batch_rates is not None
        assert price.batch_rates.cached_input == price.cached_input  # not halved
        uncached = Usage(input_tokens=100_000, output_tokens=100_000)
        cached = Usage(input_tokens=100_000, output_tokens=100_000, cache_read_tokens=50_000)
        for usage, reads in ((uncached, 0), (cached, 50_000)):
            listed = calc_price(
                usage, model_ref=model, provider_id="google", price_context={"processing": "batch"}
            ).total_price
            ours = price.cost(100_000, 100_000, reads, batch=True)
            assert ours == pytest.approx(float(listed)), model
        assert price.cost(100_000, 100_000, batch=True) == pytest.approx(
            0.5 * price.cost(100_000, 100_000)
        )


def test_implicitly_cached_tokens_are_recorded_and_priced(sqlite_store, srv):
    seed(sqlite_store)
    shared = " ".join(f"context{i % 97}" for i in range(2000))  # a 2,000-token shared prefix
    spec = batch_spec("google")
    spec["steps"][1]["prompt"] = shared + "\n\nDesign {{ item.heading }}"
    result = _run(sqlite_store, spec)
    _, calls, _ = fan_out(sqlite_store, result.workflow_id)
    cached = sorted(c.cached_input_tokens for c in calls)
    assert cached[0] == 0 and all(n >= 2000 for n in cached[1:])  # the first item warms it
    price = price_for("google", MODEL)
    for c in calls:
        expected = price.cost(c.input_tokens, c.output_tokens, c.cached_input_tokens, batch=True)
        assert c.cost_usd == pytest.approx(expected)
    uncached = sum(price.cost(c.input_tokens, c.output_tokens, batch=True) for c in calls)
    assert sum(c.cost_usd for c in calls) < 0.5 * uncached
    reads = sum(c.cached_input_tokens for c in calls)  # billed at the standard cached rate
    assert reads * price.cached_input / 1e6 < sum(c.cost_usd for c in calls)


def test_gemini_expired_and_errored_items_say_why(sqlite_store, srv):
    seed(sqlite_store)
    srv.gemini_batches.plan({0: "expired", 3: "errored"})
    result = _run(sqlite_store)
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"}
    assert ok_items(calls) == list(range(N_ITEMS))
    assert _keys(srv.gemini_batches, 1) == ["i0", "i3"]
    failed = sorted((c.item_idx, c.error_kind, c.error) for c in calls if c.outcome == "error")
    assert [f[:2] for f in failed] == [(0, "expired"), (3, "errored")]
    assert "JOB_STATE_EXPIRED" in failed[0][2] and "fake batch line error" in failed[1][2]
    assert [b.batch_id for b in batches] == [FIRST, "batches/fakegem0002"]


def test_responses_without_metadata_are_paired_by_order(sqlite_store, srv):
    srv.gemini_batches.echo_metadata = False
    srv.gemini_batches.plan({4: "errored"})
    seed(sqlite_store)
    result = _run(sqlite_store)
    items, calls, _ = fan_out(sqlite_store, result.workflow_id)
    assert _keys(srv.gemini_batches, 1) == ["i4"]  # the errored item, and only it
    for item in items:  # every answer reached its own item
        assert item.output.endswith(f"Design Feature {item.idx}")
    assert ok_items(calls) == list(range(N_ITEMS))


def test_unpairable_responses_retry_every_item_rather_than_guess(sqlite_store, srv):
    srv.gemini_batches.echo_metadata = False
    srv.gemini_batches.plan({2: "expired"})  # one response missing, no keys: order is unknown
    seed(sqlite_store)
    result = _run(sqlite_store)
    items, calls, _ = fan_out(sqlite_store, result.workflow_id)
    assert len(_keys(srv.gemini_batches, 1)) == N_ITEMS
    assert all(i.output.endswith(f"Design Feature {i.idx}") for i in items)
    assert ok_items(calls) == list(range(N_ITEMS))


def _api() -> GoogleBatches:
    api = batch_api(create_provider("google"))
    assert isinstance(api, GoogleBatches)
    return api


def test_find_looks_through_every_page_by_display_name(srv):
    async def go() -> tuple[list[str], str | None, str | None, str | None]:
        api = _api()
        try:
            request = [("c0", CompletionRequest.of("", "hi"))]
            ids = [await api.submit(request, tag=f"row{n}") for n in range(103)]
            return ids, await api.find("row0"), await api.find("row102"), await api.find("nope")
        finally:
            await api.provider.aclose()

    ids, oldest, newest, missing = asyncio.run(go())
    assert (oldest, newest, missing) == (ids[0], ids[-1], None)  # row0 is on the second page
    assert srv.gemini_batches.batches[ids[0]].metadata["displayName"] == "nyxnb-row0"
    assert ("GET", "/v1beta/batches?pageSize=100&pageToken=100") in srv.gemini_batches.calls


def test_a_batch_over_the_inline_limit_goes_as_a_jsonl_file(sqlite_store, srv, monkeypatch):
    """Over 20 MB inlined: the items go up through the Files API, results come back as a file."""
    import nyxnb.providers.batch_google as batch_google

    monkeypatch.setattr(batch_google, "INLINE_LIMIT_BYTES", 200)  # 12 small items exceed it
    srv.gemini_batches.plan({2: "expired", 7: "errored"})
    seed(sqlite_store)
    result = _run(sqlite_store)
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    fake = srv.gemini_batches
    assert [path for m, path in fake.calls if m == "POST"].count("/upload/v1beta/files") == 4
    first = fake.batches[FIRST]
    assert first.metadata["fileName"] == "files/fakeup0001" and len(first.requests) == N_ITEMS
    assert first.requests[0]["request"]["systemInstruction"]["parts"][0]["text"]
    assert ("GET", "/v1beta/files/fakegem0001-out:download") in fake.calls
    assert _keys(fake, 1) == ["i2", "i7"]  # resubmitted, again as a file
    assert all(i.output.endswith(f"Design Feature {i.idx}") for i in items)
    assert ok_items(calls) == list(range(N_ITEMS))
    assert {c.service_tier for c in calls} == {"batch"} and len(batches) == 2


def test_the_inline_size_estimate_is_the_requests_text():
    big = "word " * (INLINE_LIMIT_BYTES // 5 // 8)
    requests = [(f"c{i}", CompletionRequest.of("", big)) for i in range(8)]
    from nyxnb.providers.batch_google import _size

    assert INLINE_LIMIT_BYTES * 0.95 < _size(requests) <= INLINE_LIMIT_BYTES * 1.01


def test_item_errors_never_carry_the_key(sqlite_store, srv):
    srv.gemini_batches.line_error = f"bad key {FAKE_KEYS['GEMINI_API_KEY']} for this item"
    srv.gemini_batches.plan({0: "errored"})
    seed(sqlite_store)
    result = _run(sqlite_store, batch_spec("google", fallback="live"))
    _, calls, _ = fan_out(sqlite_store, result.workflow_id)
    errors = [c.error for c in calls if c.outcome == "error"]
    assert errors and all("[redacted]" in e for e in errors)
    assert not any(FAKE_KEYS["GEMINI_API_KEY"] in e for e in errors)
