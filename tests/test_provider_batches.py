"""Batch fan-out through the real anthropic SDK against the fake's Message Batches API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import select

import nyxnb
from nyxnb.engine.seed import seed
from nyxnb.store.models import LlmCall, ProviderBatch, StepItem, WorkflowStep
from nyxnb.testing.batches import FakeBatchServer

N_ITEMS = 12
FAST_POLL = {"initial_s": 0.05, "max_s": 0.2, "multiplier": 2.0}


def _spec(batch: bool = True, fallback: str = "resubmit", n: int = N_ITEMS) -> dict:
    return {
        "name": "batched",
        "defaults": {
            "provider": "anthropic",
            "fallback": [],
            "cache": False,
            "batch_fallback": fallback,
            "batch_poll": FAST_POLL,
        },
        "steps": [
            {"name": "analysis", "persona": "Athena", "prompt": "Analyse {{ project.name }}"},
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "batch": batch,
                "items": [{"heading": f"Feature {i}"} for i in range(n)],
                "prompt": "Design {{ item.heading }}",
            },
        ],
    }


@pytest.fixture
def batch_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv


def _fan_out(store, workflow_id):
    with store.session() as s:
        step = s.scalar(
            select(WorkflowStep).where(
                WorkflowStep.workflow_id == workflow_id, WorkflowStep.name == "features"
            )
        )
        items = s.scalars(select(StepItem).where(StepItem.step_id == step.id)).all()
        calls = s.scalars(select(LlmCall).where(LlmCall.step_id == step.id)).all()
        batches = s.scalars(select(ProviderBatch).where(ProviderBatch.step_id == step.id)).all()
        s.expunge_all()
    return items, calls, batches


def _ok_calls(calls):
    return sorted(c.item_idx for c in calls if c.outcome == "ok")


def test_batch_fan_out_one_batch_every_item_once(sqlite_store, batch_server):
    seed(sqlite_store)
    result = nyxnb.run(_spec(), tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    items, calls, batches = _fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"}
    assert _ok_calls(calls) == list(range(N_ITEMS))
    assert len(batch_server.batches.batches) == 1 and len(batches) == 1
    assert batches[0].state == "ended" and batches[0].batch_id == "msgbatch_fake0001"
    assert {c.batch_id for c in calls} == {"msgbatch_fake0001"}
    assert {c.service_tier for c in calls} == {"batch"}
    types = [e.type for e in result.events]
    assert "batch_submitted" in types and "batch_ended" in types
    # no live Messages call for the fan-out: only the analysis step went live
    assert batch_server.hits["anthropic"] == 1


def test_expired_and_errored_items_resubmitted_in_a_new_batch(sqlite_store, batch_server):
    seed(sqlite_store)
    batch_server.batches.plan({0: "expired", 3: "errored"})
    result = nyxnb.run(_spec(), tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    items, calls, batches = _fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"}
    assert _ok_calls(calls) == list(range(N_ITEMS))
    second = list(batch_server.batches.batches.values())[1]
    assert [r["custom_id"].split("-")[1] for r in second.requests] == ["i0", "i3"]
    kinds = sorted(c.error_kind for c in calls if c.outcome == "error")
    assert kinds == ["errored", "expired"]
    assert len(batches) == 2


def test_batch_fallback_live_runs_failed_items_live(sqlite_store, batch_server):
    seed(sqlite_store)
    batch_server.batches.plan({1: "expired"})
    spec = _spec(fallback="live")
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    _, calls, _ = _fan_out(sqlite_store, result.workflow_id)
    assert len(batch_server.batches.batches) == 1
    live = [c for c in calls if c.outcome == "ok" and c.service_tier == "live"]
    assert [c.item_idx for c in live] == [1]
    assert batch_server.hits["anthropic"] == 2  # analysis + item 1


def test_batch_costs_half_of_live_for_the_same_tokens(sqlite_store, monkeypatch):
    seed(sqlite_store)
    costs, tokens = {}, {}
    for batch in (False, True):
        with FakeBatchServer(live_caching=True) as srv:  # one token count for live and batch
            srv.patch_env(monkeypatch)
            result = nyxnb.run(_spec(batch), tenant="nyx", project="BRbase", store=sqlite_store)
            assert result.ok, result.error
        _, calls, _ = _fan_out(sqlite_store, result.workflow_id)
        costs[batch] = sum(c.cost_usd for c in calls)
        tokens[batch] = sorted((c.input_tokens, c.output_tokens) for c in calls)
    assert tokens[True] == tokens[False]
    assert costs[False] > 0
    assert costs[True] == pytest.approx(0.5 * costs[False])


def test_kill_9_while_batch_processing_then_resume(sqlite_url, tmp_path, monkeypatch):
    store = nyxnb.open_store(sqlite_url)
    seed(store)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_spec()))
    with FakeBatchServer(delay_s=3.0) as srv:
        srv.patch_env(monkeypatch)
        env = {**os.environ, "NYXNB_DB_URL": sqlite_url}
        cmd = [sys.executable, "-m", "nyxnb", "run", str(spec_path), "--tenant", "nyx",
               "--project", "BRbase", "--json"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)  # fmt: skip
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
        _, _, batches = _fan_out(store, workflow_id)
        assert [b.state for b in batches] == ["open"]  # durable before the wait

        result = nyxnb.resume(workflow_id, store=store)
        assert result.ok, result.error
        assert len(srv.batches.batches) == 1  # re-adopted, not submitted again
        ids = srv.batches.submitted_ids()
        assert len(ids) == len(set(ids)) == N_ITEMS
        adopted = [e for e in result.events if e.type == "batch_submitted"]
        assert [e.adopted for e in adopted] == [True]
        items, calls, batches = _fan_out(store, workflow_id)
        assert {i.status for i in items} == {"completed"}
        assert _ok_calls(calls) == list(range(N_ITEMS))  # every item once
        assert [b.state for b in batches] == ["ended"]

        before = list(srv.batches.calls), srv.hits["anthropic"]
        again = nyxnb.resume(workflow_id, store=store)
        assert again.ok
        assert (srv.batches.calls, srv.hits["anthropic"]) == before  # no call at all
    store.engine.dispose()


def test_cancel_batch_then_resume_resubmits_canceled_items(sqlite_url, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nyxnb.cli.main import cli

    store = nyxnb.open_store(sqlite_url)
    seed(store)
    with FakeBatchServer(delay_s=60.0) as srv:
        srv.patch_env(monkeypatch)
        events = nyxnb.run_iter(_spec(), tenant="nyx", project="BRbase", store=store)
        workflow_id = ""
        for event in events:
            workflow_id = event.workflow_id
            if event.type == "batch_progress":
                nyxnb.pause(workflow_id, store=store)
        out = CliRunner().invoke(cli, ["--db", sqlite_url, "cancel-batch", workflow_id])
        assert out.exit_code == 0, out.output
        assert "cancel requested: anthropic batch msgbatch_fake0001" in out.output
        srv.batches.delay_s = 0.0  # the resubmitted batch ends at once
        result = nyxnb.resume(workflow_id, store=store)
        assert result.ok, result.error
        first, second = srv.batches.batches.values()
        assert first.canceled and len(second.requests) == N_ITEMS // 2  # odd lines canceled
        _, calls, _ = _fan_out(store, workflow_id)
        assert _ok_calls(calls) == list(range(N_ITEMS))
    store.engine.dispose()


def test_offline_provider_simulates_a_batch(sqlite_store):
    seed(sqlite_store)
    spec = _spec() | {"defaults": {"provider": "offline", "fallback": [], "batch": True}}
    spec["steps"][1].pop("batch")
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    _, calls, batches = _fan_out(sqlite_store, result.workflow_id)
    assert len(batches) == 1 and batches[0].batch_id.startswith("offbatch_")
    assert _ok_calls(calls) == list(range(N_ITEMS))
