"""Workers and batch fan-outs (issue 22 items 1 and 14), with real ``nyxnb worker`` processes.

A batched fan-out's items belong to its batch: helping workers never call them live. A helping
worker's live calls carry the same prompt-cache prefix as the lead's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

import nyxnb
from nyxnb.store.models import StepItem, Workflow
from nyxnb.store.seed import seed
from nyxnb.testing import Reply
from nyxnb.testing.batches import FakeBatchServer
from tests._launch import stop_all, wait_for_workers, worker_proc
from tests.batch_helpers import batch_spec, fan_out, ok_items

SHARED = " ".join(f"context{i % 97}" for i in range(1500))  # 1,500 cacheable tokens


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer(delay_s=2.0) as server:
        server.patch_env(monkeypatch)  # the worker processes inherit the environment
        yield server


def _finished(store: Any, workflow_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.session() as s:
            status = s.get_one(Workflow, workflow_id).status
        if status in ("completed", "failed"):
            return str(status)
        time.sleep(0.1)
    raise AssertionError(f"workflow still {status} after {timeout} s")


def _submit_to_workers(store: Any, store_url: str, spec: dict[str, Any], n: int) -> str:
    """Start ``n`` workers, queue ``spec``, wait for it to finish; the workflow id."""
    procs = [worker_proc(store_url, None, concurrency=4) for _ in range(n)]
    wait_for_workers(store, n)
    workflow_id = nyxnb.submit(spec, tenant="nyx", project="BRbase", store=store)
    status = _finished(store, workflow_id)
    outs = stop_all(procs)
    assert status == "completed", outs
    return workflow_id


def test_helping_workers_never_call_a_batched_fan_out_live(store, store_url, srv):
    """3 workers, 30 batched items: 30 batch requests and not one live call for them."""
    seed(store)
    n = 30
    workflow_id = _submit_to_workers(store, store_url, batch_spec("anthropic", n=n), 3)
    items, calls, batches = fan_out(store, workflow_id)
    assert ok_items(calls) == list(range(n))  # every item once
    assert {c.service_tier for c in calls if c.outcome == "ok"} == {"batch"}
    assert [b.state for b in batches] == ["ended"] and len(srv.batches.batches) == 1
    live = [str(b["messages"]) for _, path, b in srv.requests if path == "/v1/messages"]
    assert live and not [m for m in live if "Design Feature" in m], live  # no item went live
    assert not [c for c in calls if c.outcome == "sent"]


def test_a_helping_worker_sends_the_shared_prefix_for_caching(store, store_url, srv):
    """2 workers share a live fan-out: every item's request, the helper's too, marks the
    prefix the prompts share with ``cache_control``."""
    seed(store)
    srv.set_default("anthropic", Reply(latency_ms=400))
    spec = batch_spec("anthropic", batch=False, n=32)
    spec["steps"][1]["prompt"] = SHARED + "\n\nDesign {{ item.heading }}"
    workflow_id = _submit_to_workers(store, store_url, spec, 2)
    items = [b for p, path, b in srv.requests if path == "/v1/messages" and SHARED[:50] in str(b)]

    assert len(items) == 32
    for params in items:
        first = params["messages"][0]["content"]
        assert isinstance(first, list) and first[0]["cache_control"] == {"type": "ephemeral"}
    with store.session() as s:
        step_ids = select(StepItem.claimed_by).join(Workflow, Workflow.id == workflow_id)
        committers = set(s.scalars(step_ids))
    assert len(committers - {None}) == 2  # the fan-out really was shared
