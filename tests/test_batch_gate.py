"""Batch requests wait at one 429 gate per provider's batch API (nyxnb/engine/batch/gate.py).

A storm of bare 429s (no retry-after, no rate headers, as recorded: see
``nyxnb.testing.faults.RATE_LIMIT_SOURCES``) on every batch endpoint, while several workflows of
one process wait on their batches: the requests sent during the storm are one probe per
backoff interval (about 1 s, then 2 s, ...), not one per batch per poll.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import nyxnb
from nyxnb.engine.batch.gate import gate_of, through
from nyxnb.engine.context import Paused
from nyxnb.engine.iterate.variants import run_matrix
from nyxnb.providers.registry import create_provider
from nyxnb.store.seed import seed
from nyxnb.testing import rate_limited
from nyxnb.testing.batches import FakeBatchServer
from tests.batch_helpers import N_ITEMS, batch_spec, fan_out, ok_items

VARIANTS = ["0", "0.3", "0.6", "0.9"]  # four workflows side by side, each with its batch
STORM_S = 3.0


def _storm_once_all_batches_wait(srv: FakeBatchServer, n: int, stop: threading.Event) -> None:
    """Start the storm once ``n`` batches were created (every run is polling then)."""
    while not stop.is_set():
        if len(srv.batches.batches) >= n:
            srv.storm(STORM_S)
            return
        time.sleep(0.01)


@pytest.fixture
def storming(monkeypatch: pytest.MonkeyPatch):
    with FakeBatchServer(delay_s=STORM_S + 1.0) as srv:
        srv.patch_env(monkeypatch)
        stop = threading.Event()
        watcher = threading.Thread(
            target=_storm_once_all_batches_wait, args=(srv, len(VARIANTS), stop), daemon=True
        )
        watcher.start()
        yield srv
        stop.set()
        watcher.join()


def test_a_429_storm_during_polling_sends_one_probe_per_interval_not_one_per_batch(
    sqlite_store, storming
) -> None:
    seed(sqlite_store)
    spec = batch_spec()  # polls every 0.05 s growing to 0.2 s: ~15 polls a batch in 3 s
    experiment = run_matrix(
        spec,
        tenant="nyx",
        project="BRbase",
        matrix={"temperature": VARIANTS},
        store=sqlite_store,
    )
    assert all(r.ok for r in experiment.results), [r.error for r in experiment.results]
    assert len(storming.batches.batches) == len(VARIANTS)  # polled again, never re-created
    stormed = storming.stormed
    assert stormed, "the storm met no request"
    # the polls in flight when it began, then one probe per interval: ~1.1 s and ~3.3 s in
    timeline = [(round(t - stormed[0][0], 2), path.rsplit("/", 1)[-1]) for t, _, path in stormed]
    print(f"{len(stormed)} batch requests during the {STORM_S:g} s storm: {timeline}")
    assert len(stormed) <= len(VARIANTS) + 3, timeline
    for result in experiment.results:
        items, calls, batches = fan_out(sqlite_store, result.workflow_id)
        assert {i.status for i in items} == {"completed"}
        assert ok_items(calls) == list(range(N_ITEMS))
        assert [b.state for b in batches] == ["ended"]


def test_a_hint_past_max_wait_gives_the_batch_up_at_once_and_the_items_run_live(
    sqlite_store, monkeypatch
) -> None:
    seed(sqlite_store)
    spec = batch_spec()
    spec["defaults"]["max_wait_s"] = 2.0
    with FakeBatchServer() as srv:
        srv.patch_env(monkeypatch)
        srv.fail_creates("anthropic", rate_limited(30))  # "come back in 30 s"
        started = time.monotonic()
        result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
        wall = time.monotonic() - started
        creates = [c for c in srv.batches.calls if c == ("POST", "/v1/messages/batches")]
    assert result.ok, result.error
    assert wall < 20, wall  # not 30 s
    assert not srv.batches.batches and not creates  # the one create was the refused one
    fallback = [e for e in result.events if e.type == "provider_fallback"]
    assert "rate limited past max_wait_s (2 s)" in fallback[0].message
    _, calls, rows = fan_out(sqlite_store, result.workflow_id)
    assert ok_items(calls) == list(range(N_ITEMS))
    assert {c.service_tier for c in calls if c.outcome == "ok"} != {"batch"}  # live
    assert [r.state for r in rows] == ["canceled"]  # the 429'd attempt; none for the hopeless wait


def test_a_pause_while_waiting_at_the_gate_stops_the_wait_and_leaves_no_ticket_out() -> None:
    provider = create_provider("anthropic")

    async def go() -> tuple[float, int, bool]:
        gate = gate_of(provider)
        ticket = await gate.acquire(0.0, 1.0)
        await gate.throttled(ticket, None, 30.0)  # a 429 asking for 30 s
        pause = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, pause.set)
        started = time.monotonic()
        with pytest.raises(Paused):
            await through(provider, _never_called, pause, 60.0)
        return time.monotonic() - started, gate.in_flight, gate_of(provider) is gate

    waited, in_flight, same = asyncio.run(go())
    assert waited < 5 and in_flight == 0 and same


async def _never_called() -> None:
    raise AssertionError("the gate let a request through while held")


def test_a_closed_loops_gates_are_dropped() -> None:
    from nyxnb.engine.batch import gate

    provider = create_provider("anthropic")

    async def look() -> asyncio.AbstractEventLoop:
        gate_of(provider)
        return asyncio.get_running_loop()

    first = asyncio.run(look())
    assert first in gate._GATES
    asyncio.run(look())
    assert first not in gate._GATES  # dropped once closed, not kept for the process's life
