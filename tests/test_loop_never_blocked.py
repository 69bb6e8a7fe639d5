"""Nothing blocks the shared event loop: while one workflow waits out a database fault, another
workflow on the same loop keeps committing items.

Workflow A's write transactions fail for a while (the server "went away"); B runs beside it on
the same loop, against the same database.  A blocking retry (``time.sleep`` in the store's
reconnect or in the runner's failure recording) would freeze B for the whole fault; the engine
retries with ``asyncio.sleep`` / ``call_later`` instead, so B's items keep landing.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Connection, create_engine, select
from sqlalchemy.exc import OperationalError

import nyxnb
from nyxnb import events as ev
from nyxnb.engine.durable.gateway import Gateway
from nyxnb.store import Store, database, open_store
from nyxnb.store.models import Workflow
from tests.helpers import minimal

time_sleep = time.sleep
FAULT_S = 1.5  # how long A's database "is away"
LATENCY = {"offline": {"latency_ms": 20}}


def _fan_out(name: str, n: int) -> dict[str, object]:
    return {
        "name": name,
        "defaults": {"provider": "offline", "fallback": [], "cache": False, "concurrency": 2},
        "steps": [
            {"name": "items", "type": "fan-out", "prompt": "Do {{ item.heading }}",
             "items": [{"heading": f"item {i}"} for i in range(n)]},
        ],
    }  # fmt: skip


class _Fault:
    """Makes every write transaction of one run fail while armed (a server gone away)."""

    def __init__(self) -> None:
        self.workflow_id, self.until, self.hits = "", 0.0, 0

    def arm(self, workflow_id: str) -> None:
        if not self.until:
            self.workflow_id, self.until = workflow_id, time.monotonic() + FAULT_S

    def check(self, gateway: Gateway) -> None:
        if gateway.workflow_id == self.workflow_id and time.monotonic() < self.until:
            self.hits += 1
            raise OperationalError("BEGIN", {}, Exception("server closed the connection"))


Seen = list[tuple[float, ev.Event]]


async def _drive(spec: dict[str, object], store: Store, seen: Seen, fault: _Fault | None) -> None:
    async for event in nyxnb.arun(
        spec, tenant="nyx", project="BRbase", store=store, provider_options=LATENCY
    ):
        seen.append((time.monotonic(), event))
        if fault is not None and isinstance(event, ev.FanOutProgress) and event.completed == 3:
            fault.arm(event.workflow_id)  # mid fan-out


def test_a_database_fault_in_one_workflow_does_not_stall_another(store_url, monkeypatch):
    minimal(open_store(store_url)).dispose()
    store_a, store_b = open_store(store_url), open_store(store_url)
    fault = _Fault()
    real_fence = Gateway.fence

    def fence(self: Gateway, conn: Connection) -> None:  # first in every write of a run
        fault.check(self)
        real_fence(self, conn)

    monkeypatch.setattr(Gateway, "fence", fence)
    seen_a: Seen = []
    seen_b: Seen = []

    async def both() -> None:
        b = asyncio.create_task(_drive(_fan_out("b", 300), store_b, seen_b, None))
        while len(seen_b) < 5:  # B is under way
            await asyncio.sleep(0.01)
        await _drive(_fan_out("a", 100), store_a, seen_a, fault)
        await b

    asyncio.run(both())
    start, end = fault.until - FAULT_S, fault.until
    assert fault.hits >= 2  # A did retry during the fault
    during = [t for t, e in seen_b if isinstance(e, ev.FanOutProgress) and start <= t <= end]
    gaps = [b - a for a, b in zip([start, *during], [*during, end], strict=True)]
    assert len(during) >= 10 and max(gaps) < 0.5, (len(during), max(gaps))
    assert isinstance(seen_b[-1][1], ev.WorkflowCompleted)
    last_a = seen_a[-1][1]  # A waited the fault out, or failed cleanly with it recorded
    with store_a.session() as s:
        status = s.scalar(select(Workflow.status).where(Workflow.id == last_a.workflow_id))
    if isinstance(last_a, ev.WorkflowFailed):
        assert status == "failed" and "server closed the connection" in last_a.error
        assert nyxnb.resume(last_a.workflow_id, store=store_a).ok
    else:
        assert isinstance(last_a, ev.WorkflowCompleted) and status == "completed"
    store_a.dispose()
    store_b.dispose()


def test_the_store_never_sleeps_on_the_loop_waiting_for_a_server(monkeypatch):
    """Off the loop a lost PostgreSQL server is waited for; on the loop it raises at once (the
    engine's async call sites retry without blocking)."""
    store = Store(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))  # refused
    slept: list[float] = []
    monkeypatch.setattr(database, "RECONNECT_S", 0.3)
    monkeypatch.setattr(database.time, "sleep", lambda s: slept.append(s) or time_sleep(s))
    with pytest.raises(OperationalError):
        store.connect()
    assert slept  # the CLI's wait

    async def on_loop() -> None:
        store.connect()

    slept.clear()
    with pytest.raises(OperationalError):
        asyncio.run(on_loop())
    assert slept == []
    store.dispose()
