"""Workers: submit queues, several worker processes share one fan-out, kill -9 is taken over."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

import nyxnb
from nyxnb.engine.durable.items import item_rows, load_items
from nyxnb.engine.durable.records import load_steps
from nyxnb.engine.workers import queue
from nyxnb.engine.workers.claims import ItemClaimer
from nyxnb.errors import ClaimLost
from nyxnb.store.models import LlmCall, StepItem, Workflow, utcnow
from nyxnb.store.seed import seed
from tests._launch import stop_all, wait_for_workers, worker_proc
from tests.helpers import claimed_fan_out_step

N_ITEMS = 40


def _spec(tmp_path, n: int = N_ITEMS) -> str:
    body = {
        "name": "shared",
        "defaults": {"provider": "offline", "fallback": [], "concurrency": 4, "cache": False},
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "items": [{"heading": f"Feature {i}"} for i in range(n)],
                "prompt": "Design {{ item.heading }}",
            },
            {
                "name": "synthesis",
                "type": "synthesis",
                "persona": "Harmonia",
                "prompt": "{% for i in steps.features.items %}{{ i.output }}{% endfor %}",
            },
        ],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(body))
    return str(path)


_worker = worker_proc


def _ok_calls_per_item(store, workflow_id: str) -> dict[int, int]:
    with store.session() as s:
        rows = s.execute(
            select(LlmCall.item_idx, func.count())
            .where(LlmCall.workflow_id == workflow_id, LlmCall.item_idx.is_not(None))
            .where(LlmCall.outcome == "ok")
            .group_by(LlmCall.item_idx)
        ).all()
    return {int(i): int(n) for i, n in rows}


def _status(store, workflow_id: str) -> str:
    with store.session() as s:
        return s.get_one(Workflow, workflow_id).status


def _committers(store, workflow_id: str) -> dict[str, int]:
    with store.session() as s:
        rows = s.execute(
            select(StepItem.claimed_by, func.count())
            .join(StepItem.step)
            .where(StepItem.status == "completed")
            .where(StepItem.step.has(workflow_id=workflow_id))
            .group_by(StepItem.claimed_by)
        ).all()
    return {str(o): int(n) for o, n in rows}


def test_submit_queues_without_a_call(store, tmp_path):
    seed(store)
    workflow_id = nyxnb.submit(_spec(tmp_path), tenant="nyx", project="BRbase", store=store)
    assert _status(store, workflow_id) == "queued"
    assert _ok_calls_per_item(store, workflow_id) == {}
    assert queue.claim_next(store, "me:1:x") == workflow_id
    assert queue.claim_next(store, "other:2:y") is None  # leased: nobody else gets it


def test_two_worker_processes_share_one_fan_out(store, store_url, tmp_path):
    seed(store)
    procs = [_worker(store_url, 100) for _ in range(2)]
    wait_for_workers(store, 2)  # both up, then submit
    deadline = time.monotonic() + 60
    workflow_id = nyxnb.submit(_spec(tmp_path), tenant="nyx", project="BRbase", store=store)
    while _status(store, workflow_id) not in ("completed", "failed"):
        assert time.monotonic() < deadline + 60
        time.sleep(0.1)
    outs = stop_all(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _status(store, workflow_id) == "completed"
    calls = _ok_calls_per_item(store, workflow_id)
    assert calls == {i: 1 for i in range(N_ITEMS)}  # every item once, none twice
    committers = _committers(store, workflow_id)
    assert len(committers) == 2 and sum(committers.values()) == N_ITEMS  # both did items
    synthesis = [s for s in load_steps(store, workflow_id) if s.name == "synthesis"][0]
    with store.session() as s:
        runs = s.scalar(select(func.count()).where(LlmCall.step_id == synthesis.id))
    assert runs == 1  # the step after the fan-out ran once


def _wait_for_items(store, workflow_id: str, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sum(_ok_calls_per_item(store, workflow_id).values())
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise AssertionError(f"only {done} items after {timeout}s")


def test_kill_9_of_a_worker_is_taken_over(store, store_url, tmp_path):
    seed(store)
    workflow_id = nyxnb.submit(_spec(tmp_path), tenant="nyx", project="BRbase", store=store)
    victim = _worker(store_url, 150)
    before = _wait_for_items(store, workflow_id, 8)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    held = [i for i in load_items(store, load_steps(store, workflow_id)[0].id)
            if i.status == "running"]  # fmt: skip
    assert len(held) <= 8  # claimed in small batches, at most one batch + in flight
    rescuer = _worker(store_url, 20, "--exit-when-idle")
    _, err = rescuer.communicate(timeout=120)
    assert rescuer.returncode == 0, err
    assert _status(store, workflow_id) == "completed"
    calls = _ok_calls_per_item(store, workflow_id)
    assert calls == {i: 1 for i in range(N_ITEMS)}, (before, calls)  # none lost, none twice


def test_one_owner_per_item_and_fenced_writes(store, tmp_path):
    step = claimed_fan_out_step(store, _spec(tmp_path, 10), 10)
    a, b = ItemClaimer(store, "a:1:a"), ItemClaimer(store, "b:2:b")
    got_a, got_b = a.claim(step.id, 4), b.claim(step.id, 4)
    assert {c.idx for c in got_a}.isdisjoint({c.idx for c in got_b})
    assert len(got_a) == len(got_b) == 4
    # a's claim on its first item expires; b takes it over with a new generation
    first = got_a[0].idx
    with store.engine.begin() as conn:
        conn.execute(
            update(StepItem)
            .where(StepItem.step_id == step.id, StepItem.idx == first)
            .values(claim_expires_at=utcnow() - timedelta(seconds=1))
        )
    taken = b.claim(step.id, 10)
    assert first in {c.idx for c in taken} and len(taken) == 3  # 2 never claimed + the expired
    assert taken[0].generation == got_a[0].generation + 1
    result = _fake_result()
    with pytest.raises(ClaimLost), store.engine.begin() as conn:
        a.write_batch(conn, [item_rows(step, first, "late", result)])
    with store.engine.begin() as conn:
        b.write_batch(conn, [item_rows(step, first, "mine", result)])
    row = [i for i in load_items(store, step.id) if i.idx == first][0]
    assert (row.status, row.output) == ("completed", "mine")
    assert a.claim(step.id, 10) == []  # nothing left: completed items are never re-claimed


def _fake_result():
    from nyxnb.engine.outcomes import ChainResult
    from nyxnb.providers.base import Completion

    answer = Completion("x", "end_turn", 1, 1, "offline-1", "offline")
    return ChainResult(answer, [])


def test_workers_lists_live_workers(store, store_url, tmp_path):
    from nyxnb.engine.workers.worker import live_workers

    seed(store)
    proc = _worker(store_url, 10)
    wait_for_workers(store, 1, timeout=30)
    listed = live_workers(store)
    ((_, err),) = stop_all([proc], timeout=30)  # Ctrl-C drains and unregisters
    assert proc.returncode == 0, err
    assert len(listed) == 1 and listed[0].pid == proc.pid
    assert live_workers(store) == []


def test_notebook_submits_then_attaches_to_watch_workers(sqlite_store, tmp_path):
    import io

    from nyxnb.notebook.widgets import WorkflowProgress

    store = sqlite_store
    seed(store)
    workflow_id = nyxnb.submit(_spec(tmp_path, 12), tenant="nyx", project="BRbase", store=store)
    proc = _worker(str(store.url), 30, "--exit-when-idle")
    out = io.StringIO()
    progress = WorkflowProgress.attach(store, workflow_id, widget=False, stream=out, wait=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert progress.state.status == "completed"
    assert "12/12" in out.getvalue() or "completed" in out.getvalue()
