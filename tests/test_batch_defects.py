"""Batch-mode defects of issue 22 (items 2-7, 14), each injected through the fake batch APIs.

Every test here fails without its fix: a malformed results line, an errored item echoing the
key, faults on batch create (429, 500, credit exhaustion, a connection dropped after the batch
was created), the ledger of an open batch, an unbounded poll deadline, and a chain entry naming
a model losing the prompt-cache prefix.
"""

from __future__ import annotations

import json
import math
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update

import nyxnb
from nyxnb.engine.calls.chain import RetryPolicy
from nyxnb.errors import SpecError
from nyxnb.store.models import Workflow
from nyxnb.store.seed import seed
from nyxnb.testing import Reset, credit_exhausted, error, rate_limited, server_error
from nyxnb.testing.batches import FakeBatchServer
from tests.batch_helpers import N_ITEMS, batch_spec, fan_out, ok_items, spawn_run

SHARED = " ".join(f"context{i % 97}" for i in range(1500))  # 1,500 cacheable tokens


@pytest.fixture
def batch_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv


def _run(store: Any, spec: dict[str, Any], **kw: Any) -> nyxnb.RunResult:
    return nyxnb.run(spec, tenant="nyx", project="BRbase", store=store, **kw)


# --- item 14: a chain entry that names a model keeps the cache prefix ---------------------------


def _cached_spec(provider: Any, batch: bool) -> dict[str, Any]:
    spec = batch_spec("anthropic", batch=batch, n=6)
    spec["steps"] = spec["steps"][1:]  # the fan-out only
    spec["steps"][0] |= {"provider": provider, "prompt": SHARED + "\n\nDesign {{ item.heading }}"}
    return spec


def _sent_params(srv: FakeBatchServer) -> list[dict[str, Any]]:
    live = [b for _, path, b in srv.requests if path == "/v1/messages"]
    return live + [r["params"] for b in srv.batches.batches.values() for r in b.requests]


@pytest.mark.parametrize("batch", [False, True], ids=["live", "batch"])
@pytest.mark.parametrize(
    "provider",
    ["anthropic:claude-haiku-4-5", ["anthropic:claude-haiku-4-5", "anthropic"]],
    ids=["entry", "chain"],
)
def test_a_chain_entry_naming_a_model_keeps_the_cache_prefix(
    sqlite_store, monkeypatch, provider, batch
):
    seed(sqlite_store)
    with FakeBatchServer(live_caching=True) as srv:
        srv.patch_env(monkeypatch)
        result = _run(sqlite_store, _cached_spec(provider, batch))
        assert result.ok, result.error
        sent = _sent_params(srv)
    assert len(sent) == 6 and {p["model"] for p in sent} == {"claude-haiku-4-5"}
    for params in sent:  # cache_control reached the wire on every item
        first = params["messages"][0]["content"]
        assert first[0]["cache_control"] == {"type": "ephemeral"}, first
        assert SHARED in first[0]["text"]
    _, calls, _ = fan_out(sqlite_store, result.workflow_id, "features")
    assert sum(c.cached_input_tokens for c in calls) >= 5 * 1500  # read by all but the first


# --- item 2: one malformed line of an Anthropic results file is that item's error ---------------


def test_a_malformed_results_line_is_that_items_error(sqlite_store, batch_server):
    seed(sqlite_store)
    batch_server.batches.plan({2: "malformed", 5: "malformed-anonymous"})
    result = _run(sqlite_store, batch_spec("anthropic"))
    assert result.ok, result.error
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"}
    assert ok_items(calls) == list(range(N_ITEMS))
    errors = sorted((c.item_idx, c.error_kind) for c in calls if c.outcome == "error")
    assert errors == [(2, "errored"), (5, "errored")]
    assert [b.state for b in batches] == ["ended", "ended"]  # the bad lines resubmitted
    second = list(batch_server.batches.batches.values())[1]
    assert sorted(r["custom_id"].split("-")[1] for r in second.requests) == ["i2", "i5"]


# --- item 3: an errored item that echoes the key never stores it --------------------------------


@pytest.mark.parametrize("provider", ["anthropic", "openai", "google"])
def test_an_errored_item_echoing_the_key_is_redacted(sqlite_store, monkeypatch, provider):
    seed(sqlite_store)
    canary = f"canary{uuid.uuid4().hex}"  # no provider key shape: only the key itself matches
    env = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY", "google": "GEMINI_API_KEY"}
    with FakeBatchServer() as srv:
        srv.patch_env(monkeypatch)
        monkeypatch.setenv(env[provider], canary)
        book = srv.book(provider)
        book.line_error = f"invalid x-api-key {canary}"
        book.plan({1: "errored"})
        result = _run(sqlite_store, batch_spec(provider))
    assert result.ok, result.error
    _, calls, _ = fan_out(sqlite_store, result.workflow_id)
    (failed,) = [c for c in calls if c.outcome == "error"]
    assert "invalid x-api-key" in (failed.error or "") and "[redacted]" in (failed.error or "")
    assert canary not in (failed.error or "")


# --- item 7: an unbounded poll deadline ---------------------------------------------------------


@pytest.mark.parametrize("deadline", [1e9, math.inf, math.nan, "inf"])
def test_an_unbounded_poll_deadline_is_refused_with_the_fix(deadline):
    spec = batch_spec("anthropic")
    spec["defaults"]["batch_poll"] = {"deadline_h": deadline}
    with pytest.raises(SpecError) as raised:
        nyxnb.load_spec(spec)
    assert raised.value.field == "defaults.batch_poll.deadline_h"
    assert "deadline_h" in str(raised.value) and "24" in str(raised.value)


def test_a_frozen_spec_with_an_unbounded_deadline_still_polls(sqlite_store, monkeypatch):
    """A workflow frozen by an older nyxnb with ``deadline_h: 1e9`` resumes and completes."""
    seed(sqlite_store)
    with FakeBatchServer(delay_s=0.3) as srv:
        srv.patch_env(monkeypatch)
        workflow_id = nyxnb.submit(
            batch_spec("anthropic"), tenant="nyx", project="BRbase", store=sqlite_store
        )
        with sqlite_store.session() as s:
            frozen = dict(s.get_one(Workflow, workflow_id).spec)
        frozen["defaults"]["batch_poll"]["deadline_h"] = 1e9
        with sqlite_store.engine.begin() as conn:
            conn.execute(update(Workflow).where(Workflow.id == workflow_id).values(spec=frozen))
        result = nyxnb.resume(workflow_id, store=sqlite_store)
    assert result.ok, result.error
    assert ok_items(fan_out(sqlite_store, workflow_id)[1]) == list(range(N_ITEMS))


def test_the_deadline_check_never_overflows():
    from datetime import UTC, datetime

    from nyxnb.engine.batch.poll import deadline_passed

    now = datetime(2026, 12, 4, tzinfo=UTC)
    assert not deadline_passed(now, 1e9, now)
    assert not deadline_passed(now, math.inf, now)
    assert deadline_passed(datetime(2026, 12, 1, tzinfo=UTC), 24, now)


# --- item 4: batch create follows the classified policy of live calls ---------------------------

FAST_RETRY = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05)


@pytest.mark.parametrize("provider", ["anthropic", "openai", "google"])
def test_a_429_and_a_500_on_create_are_waited_out_and_retried(sqlite_store, batch_server, provider):
    seed(sqlite_store)
    batch_server.fail_creates(provider, rate_limited(0.05), server_error(500))
    result = _run(sqlite_store, batch_spec(provider), retry=FAST_RETRY)
    assert result.ok, result.error
    items, calls, rows = fan_out(sqlite_store, result.workflow_id)
    assert ok_items(calls) == list(range(N_ITEMS))
    assert len(batch_server.book(provider).batches) == 1  # created once, paid once
    assert [r.state for r in rows] == ["canceled", "canceled", "ended"]
    assert {c.service_tier for c in calls} == {"batch"}


def _out_of_credit_then_openai(store: Any, srv: FakeBatchServer) -> tuple[Any, Any, Any]:
    """The batched spec on anthropic -> openai, Anthropic out of credit on create; run it."""
    seed(store)
    srv.fail_creates("anthropic", credit_exhausted())
    spec = batch_spec("anthropic")
    spec["defaults"]["fallback"] = ["openai"]
    result = _run(store, spec, retry=FAST_RETRY)
    assert result.ok, result.error
    _, calls, rows = fan_out(store, result.workflow_id)
    assert ok_items(calls) == list(range(N_ITEMS))
    return calls, rows, result


def test_credit_exhaustion_on_create_moves_to_the_next_providers_batch(sqlite_store, batch_server):
    calls, rows, result = _out_of_credit_then_openai(sqlite_store, batch_server)
    assert {(c.provider, c.service_tier) for c in calls} == {("openai", "batch")}
    assert [(r.provider, r.state) for r in rows] == [("anthropic", "canceled"), ("openai", "ended")]
    assert not batch_server.batches.batches and len(batch_server.openai_batches.batches) == 1
    (moved,) = [e for e in result.events if e.type == "provider_fallback"]
    assert (moved.from_provider, moved.to_provider, moved.reason) == (
        "anthropic",
        "openai",
        "exhausted",
    )


def test_when_no_provider_can_batch_the_items_run_live(sqlite_store, batch_server):
    """Anthropic out of credit, the OpenAI endpoint without a Batch API: live on OpenAI."""
    batch_server.fail_creates("openai", error(404, "Invalid URL (POST /v1/batches)"))
    calls, rows, result = _out_of_credit_then_openai(sqlite_store, batch_server)
    assert {(c.provider, c.service_tier) for c in calls} == {("openai", "live")}
    assert [r.state for r in rows] == ["canceled", "canceled"]
    reasons = [
        (e.from_provider, e.to_provider) for e in result.events if e.type == "provider_fallback"
    ]
    assert reasons == [("anthropic", "openai"), ("openai", None)]


# --- item 5: a create that fails after the provider created the batch pays once -----------------


@pytest.mark.parametrize("provider", ["openai", "google"])  # the APIs that can label a batch
def test_a_create_cut_after_the_batch_was_created_adopts_it(sqlite_store, batch_server, provider):
    seed(sqlite_store)
    batch_server.fail_creates(provider, Reset())
    result = _run(sqlite_store, batch_spec(provider), retry=FAST_RETRY)
    assert result.ok, result.error
    book = batch_server.book(provider)
    assert len(book.batches) == 1  # looked up by its label and adopted, not created again
    ids = book.submitted_ids()
    assert len(ids) == len(set(ids)) == N_ITEMS
    _, calls, rows = fan_out(sqlite_store, result.workflow_id)
    assert ok_items(calls) == list(range(N_ITEMS))
    assert [(r.state, r.batch_id) for r in rows] == [("ended", f"{book.id_prefix}0001")]
    assert [e.adopted for e in result.events if e.type == "batch_submitted"] == [True]


# --- item 6: an open batch is in the ledger ----------------------------------------------------


def test_an_open_batch_is_in_the_ledger_after_kill_9(sqlite_url, tmp_path, monkeypatch):
    store = nyxnb.open_store(sqlite_url)
    seed(store)
    with FakeBatchServer(delay_s=3.0) as srv:
        srv.patch_env(monkeypatch)
        proc = spawn_run(batch_spec("anthropic"), tmp_path, sqlite_url)
        assert proc.stdout is not None
        workflow_id = ""
        for line in proc.stdout:
            event = json.loads(line)
            workflow_id = event["workflow_id"]
            if event["type"] == "batch_progress":  # submitted and polling
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
        _, calls, _ = fan_out(store, workflow_id)
        sent = [c for c in calls if c.outcome == "sent"]
        assert sorted(c.item_idx for c in sent) == list(range(N_ITEMS))
        assert {c.service_tier for c in sent} == {"batch"}
        open_usd = sum(c.cost_usd for c in sent)
        result = nyxnb.resume(workflow_id, store=store)
        assert result.ok, result.error
    _, calls, _ = fan_out(store, workflow_id)
    assert not [c for c in calls if c.outcome == "sent"]  # each settled by its result
    billed = sum(c.cost_usd for c in calls)
    assert ok_items(calls) == list(range(N_ITEMS)) and 0 < billed <= open_usd
    store.engine.dispose()


def test_the_create_policy_is_the_live_calls_policy():
    """A transient failure is retried max_attempts times; a refusal is not (a 429 is the batch
    gate's: tests/test_batch_gate.py)."""
    from nyxnb.engine.batch.create import retry_delay
    from nyxnb.errors import ProviderRefused, ProviderUnavailable

    policy = RetryPolicy(max_wait_s=100.0)

    def unavailable(kind: str, after: float | None = None) -> ProviderUnavailable:
        return ProviderUnavailable("x", provider="anthropic", kind=kind, retry_after=after)

    assert retry_delay(policy, unavailable("server"), 2) == policy.delay(2, None)
    assert retry_delay(policy, unavailable("server", 7.0), 1) == policy.delay(1, 7.0)
    assert retry_delay(policy, unavailable("server"), 3) is None  # max_attempts used
    refused = ProviderRefused("no credit", provider="anthropic", kind="exhausted")
    assert retry_delay(policy, refused, 1) is None
