"""The engine's one gateway to the database: a stale run's every write is refused.

A run that lost its lease (stopped past its TTL while another run took over) had its step
updates refused but its batch rows and ledger rows written: they went through the raw engine.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select, update

from nyxnb.engine.durable import records
from nyxnb.engine.durable.gateway import Gateway
from nyxnb.engine.outcomes import Attempt
from nyxnb.engine.runner import RunConfig, Runner
from nyxnb.errors import LeaseLost
from nyxnb.store.models import LlmCall, ProviderBatch, Workflow
from tests.helpers import claimed_fan_out_step


def _spec(tmp_path) -> str:
    body = {
        "name": "fenced",
        "defaults": {"provider": "offline", "fallback": []},
        "steps": [{"name": "items", "type": "fan-out", "persona": "Cael",
                   "items": [{"heading": "A"}, {"heading": "B"}], "prompt": "{{ item.heading }}"}],
    }  # fmt: skip
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(body))
    return str(path)


def _counts(store) -> tuple[int, int, set[str]]:
    with store.session() as s:
        batches = s.scalar(select(func.count()).select_from(ProviderBatch)) or 0
        calls = s.scalar(select(func.count()).select_from(LlmCall)) or 0
        states = set(s.scalars(select(ProviderBatch.state)))
    return batches, calls, states


def test_a_stale_runs_batch_and_ledger_writes_are_refused(store, tmp_path):
    step = claimed_fan_out_step(store, _spec(tmp_path), 2)
    plain = Gateway.of(store)
    row_id = records.insert_batch(plain, step, "openai", "gpt-4o-mini", ["a", "b"])
    records.update_batch(plain, row_id, batch_id="batch_1")
    with store.session() as s:  # another run holds the lease now
        s.execute(update(Workflow).where(Workflow.id == step.workflow_id).values(lease_owner="new"))
    stale = plain.fenced(step.workflow_id, "old")
    before = _counts(store)
    attempt = Attempt("openai", "gpt-4o-mini", 1, "error", error="expired")
    writes = [
        lambda: records.insert_batch(stale, step, "openai", "gpt-4o-mini", ["c"]),
        lambda: records.update_batch(stale, row_id, state="ended"),
        lambda: records.mark_canceling(stale, step.workflow_id, "batch_1"),
        lambda: records.record_calls(stale, step, [attempt], 0),
        lambda: records.update_step(stale, step.id, status="failed"),
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            write()
    assert _counts(store) == before  # nothing of the stale run was written
    mine = plain.fenced(step.workflow_id, "new")  # the lease holder's writes go through
    records.update_batch(mine, row_id, state="ended")
    assert _counts(store)[2] == {"ended"}


def test_a_run_reaches_the_database_only_through_its_fenced_gateway(store, tmp_path):
    step = claimed_fan_out_step(store, _spec(tmp_path), 2)
    runner = Runner(store, step.workflow_id, RunConfig(owner="me"), emit=lambda _e: None)
    assert isinstance(runner.store, Gateway) and runner.store.owner == "me"
    assert not hasattr(runner.store, "engine") and not hasattr(runner.writer, "engine")
