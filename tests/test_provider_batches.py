"""Batch fan-out through the real anthropic, openai and google-genai SDKs against the fake's
batch APIs.

Every test runs once per provider: Anthropic Message Batches, OpenAI Files + Batches, Gemini
batch mode.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

import nyxnb
from nyxnb.store.seed import seed
from nyxnb.testing.batchbook import FakeBatch
from nyxnb.testing.batches import FakeBatchServer
from tests.batch_helpers import N_ITEMS, batch_spec, fan_out, ok_items, spawn_run

PROVIDERS = ["anthropic", "openai", "google"]


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def batch_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv


def _first_id(srv: FakeBatchServer, provider: str) -> str:
    return f"{srv.book(provider).id_prefix}0001"


def test_batch_fan_out_one_batch_every_item_once(sqlite_store, batch_server, provider):
    seed(sqlite_store)
    spec = batch_spec(provider)
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"}
    assert ok_items(calls) == list(range(N_ITEMS))
    batch_id = _first_id(batch_server, provider)
    assert len(batch_server.book(provider).batches) == 1 and len(batches) == 1
    assert batches[0].state == "ended" and batches[0].batch_id == batch_id
    assert {c.batch_id for c in calls} == {batch_id}
    assert {c.service_tier for c in calls} == {"batch"}
    assert {c.provider for c in calls} == {provider}
    types = [e.type for e in result.events]
    assert "batch_submitted" in types and "batch_ended" in types
    # no live call for the fan-out: only the analysis step went live
    assert batch_server.hits[provider] == 1


def test_expired_and_errored_items_resubmitted_in_a_new_batch(sqlite_store, batch_server, provider):
    seed(sqlite_store)
    batch_server.book(provider).plan({0: "expired", 3: "errored"})
    result = nyxnb.run(batch_spec(provider), tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"}
    assert ok_items(calls) == list(range(N_ITEMS))
    second = list(batch_server.book(provider).batches.values())[1]
    assert [r["custom_id"].split("-")[1] for r in second.requests] == ["i0", "i3"]
    kinds = sorted(c.error_kind for c in calls if c.outcome == "error")
    assert kinds == ["errored", "expired"]
    assert len(batches) == 2


def test_batch_fallback_live_runs_failed_items_live(sqlite_store, batch_server, provider):
    seed(sqlite_store)
    batch_server.book(provider).plan({1: "expired"})
    spec = batch_spec(provider, fallback="live")
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    _, calls, _ = fan_out(sqlite_store, result.workflow_id)
    assert len(batch_server.book(provider).batches) == 1
    live = [c for c in calls if c.outcome == "ok" and c.service_tier == "live"]
    assert [c.item_idx for c in live] == [1]
    assert batch_server.hits[provider] == 2  # analysis + item 1


def test_batch_costs_half_of_live_for_the_same_tokens(sqlite_store, monkeypatch, provider):
    seed(sqlite_store)
    costs, tokens = {}, {}
    for batch in (False, True):
        with FakeBatchServer(live_caching=True) as srv:  # one token count for live and batch
            srv.patch_env(monkeypatch)
            spec = batch_spec(provider, batch)
            result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
            assert result.ok, result.error
        _, calls, _ = fan_out(sqlite_store, result.workflow_id)
        assert {c.service_tier for c in calls} == {"batch" if batch else "live"}
        costs[batch] = sum(c.cost_usd for c in calls)
        tokens[batch] = sorted((c.input_tokens, c.output_tokens) for c in calls)
    assert tokens[True] == tokens[False]
    assert costs[False] > 0
    assert costs[True] == pytest.approx(0.5 * costs[False])


def test_kill_9_while_batch_processing_then_resume(sqlite_url, tmp_path, monkeypatch, provider):
    store = nyxnb.open_store(sqlite_url)
    seed(store)
    with FakeBatchServer(delay_s=3.0) as srv:
        srv.patch_env(monkeypatch)
        book = srv.book(provider)
        proc = spawn_run(batch_spec(provider), tmp_path, sqlite_url)
        assert proc.stdout is not None
        workflow_id = ""
        for line in proc.stdout:
            event = json.loads(line)
            workflow_id = event["workflow_id"]
            if event["type"] == "batch_progress":  # submitted, committed, now polling
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        _, _, batches = fan_out(store, workflow_id)
        assert [b.state for b in batches] == ["open"]  # durable before the wait

        result = nyxnb.resume(workflow_id, store=store)
        assert result.ok, result.error
        assert len(book.batches) == 1  # re-adopted, not submitted again
        ids = book.submitted_ids()
        assert len(ids) == len(set(ids)) == N_ITEMS
        adopted = [e for e in result.events if e.type == "batch_submitted"]
        assert [e.adopted for e in adopted] == [True]
        items, calls, batches = fan_out(store, workflow_id)
        assert {i.status for i in items} == {"completed"}
        assert ok_items(calls) == list(range(N_ITEMS))  # every item once
        assert [b.state for b in batches] == ["ended"]

        before = list(book.calls), srv.hits[provider]
        again = nyxnb.resume(workflow_id, store=store)
        assert again.ok
        assert (book.calls, srv.hits[provider]) == before  # no call at all
    store.engine.dispose()


def test_cancel_batch_then_resume_resubmits_canceled_items(
    sqlite_url, tmp_path, monkeypatch, provider
):
    from click.testing import CliRunner

    from nyxnb.cli.main import cli

    store = nyxnb.open_store(sqlite_url)
    seed(store)
    with FakeBatchServer(delay_s=60.0) as srv:
        srv.patch_env(monkeypatch)
        book = srv.book(provider)
        events = nyxnb.run_iter(batch_spec(provider), tenant="nyx", project="BRbase", store=store)
        workflow_id, paused = "", False
        for event in events:
            workflow_id = event.workflow_id
            if event.type == "batch_progress" and not paused:  # once: a second poll may come
                nyxnb.pause(workflow_id, store=store)
                paused = True
        out = CliRunner().invoke(cli, ["--db", sqlite_url, "cancel-batch", workflow_id])
        assert out.exit_code == 0, out.output
        assert f"cancel requested: {provider} batch {_first_id(srv, provider)}" in out.output
        book.delay_s = 0.0  # the resubmitted batch ends at once
        result = nyxnb.resume(workflow_id, store=store)
        assert result.ok, result.error
        first, second = book.batches.values()
        assert first.canceled and len(second.requests) == N_ITEMS // 2  # odd lines canceled
        _, calls, _ = fan_out(store, workflow_id)
        assert ok_items(calls) == list(range(N_ITEMS))
        assert sorted(c.error_kind for c in calls if c.outcome == "error") == ["canceled"] * 6
    store.engine.dispose()


def _find_fails_once(monkeypatch, provider: str) -> None:
    from nyxnb.errors import ProviderUnavailable
    from nyxnb.providers.batch_google import GoogleBatches
    from nyxnb.providers.batch_openai import OpenAIBatches

    api = {"openai": OpenAIBatches, "google": GoogleBatches}[provider]
    find = api.find

    async def down_once(self, tag: str) -> str | None:
        monkeypatch.setattr(api, "find", find)
        raise ProviderUnavailable("503 Service Unavailable", provider=provider, kind="overloaded")

    monkeypatch.setattr(api, "find", down_once)


@pytest.mark.parametrize("labelled", ["openai", "google"])
@pytest.mark.parametrize("created", [True, False], ids=["batch-created", "create-lost"])
def test_kill_9_between_create_and_commit(sqlite_url, tmp_path, monkeypatch, created, labelled):
    """The batch carries its row id (OpenAI ``metadata``, Gemini ``displayName``); a resume
    finds it by that instead of paying twice."""
    store = nyxnb.open_store(sqlite_url)
    seed(store)
    with FakeBatchServer(delay_s=0.5) as srv:
        srv.patch_env(monkeypatch)
        book, pids = srv.book(labelled), []

        def kill_client(batch: FakeBatch) -> None:  # runs before the answer is sent
            os.kill(pids[0], signal.SIGKILL)
            if not created:  # as if the create never reached the provider
                del book.batches[batch.id]

        book.on_create = kill_client
        proc = spawn_run(batch_spec(labelled), tmp_path, sqlite_url)
        pids.append(proc.pid)
        assert proc.stdout is not None
        workflow_id = json.loads(proc.stdout.readline())["workflow_id"]
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        _, _, rows = fan_out(store, workflow_id)
        assert [(r.state, r.batch_id) for r in rows] == [("submitting", None)]
        assert len(book.batches) == int(created)
        book.on_create = None

        if created:  # the lookup fails once: the resume pauses, buys nothing, and looks again
            _find_fails_once(monkeypatch, labelled)
            assert nyxnb.resume(workflow_id, store=store).status == "paused"
            assert len(book.batches) == 1
            assert [r.state for r in fan_out(store, workflow_id)[2]] == ["submitting"]
        result = nyxnb.resume(workflow_id, store=store)
        assert result.ok, result.error
        assert len(book.batches) == 1  # adopted, or submitted once since none existed
        ids = book.submitted_ids()
        assert len(ids) == len(set(ids)) == N_ITEMS
        items, calls, rows = fan_out(store, workflow_id)
        assert {i.status for i in items} == {"completed"}
        assert ok_items(calls) == list(range(N_ITEMS))
        expected = ["ended"] if created else ["canceled", "ended"]
        assert [r.state for r in rows] == expected
        first = _first_id(srv, labelled)
        assert rows[-1].batch_id == first and {c.batch_id for c in calls} == {first}
        adopted = [e.adopted for e in result.events if e.type == "batch_submitted"]
        assert adopted == ([True] if created else [False])
    store.engine.dispose()


def test_offline_provider_simulates_a_batch(sqlite_store):
    seed(sqlite_store)
    spec = batch_spec() | {"defaults": {"provider": "offline", "fallback": [], "batch": True}}
    spec["steps"][1].pop("batch")
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    _, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert len(batches) == 1 and batches[0].batch_id.startswith("offbatch_")
    assert ok_items(calls) == list(range(N_ITEMS))
