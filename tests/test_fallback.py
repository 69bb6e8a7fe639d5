"""Fallback chains through the real SDKs against the loopback fake server."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

import nyxnb
from nyxnb import events as ev
from nyxnb.providers.pricing import price_for
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep
from nyxnb.store.seed import seed
from nyxnb.testing import (
    FakeProviderServer,
    Reply,
    credit_exhausted,
    rate_limited,
    server_error,
)

FAST = nyxnb.RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture
def fake(monkeypatch):
    with FakeProviderServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv


@pytest.fixture
def seeded(sqlite_store):
    seed(sqlite_store)
    return sqlite_store


def fan_spec(n=13, chain=("anthropic", "google", "openai"), **defaults):
    return {
        "name": "fallback",
        "defaults": {
            "provider": chain[0],
            "fallback": list(chain[1:]),
            "cache": False,
            "concurrency": 4,
            **defaults,
        },
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "items": [{"heading": f"Feature {i}"} for i in range(n)],
                "prompt": "Design {{ item.heading }}",
            }
        ],
    }


def items(store, workflow_id):
    with store.session() as s:
        return s.scalars(
            select(StepItem)
            .join(WorkflowStep)
            .where(WorkflowStep.workflow_id == workflow_id)
            .order_by(StepItem.idx)
        ).all()


def calls(store, workflow_id):
    with store.session() as s:
        return s.scalars(select(LlmCall).where(LlmCall.workflow_id == workflow_id)).all()


def test_out_of_credit_provider_is_called_once_per_run(seeded, fake):
    fake.set_default("anthropic", credit_exhausted())
    result = nyxnb.run(fan_spec(13), tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    assert result.ok, result.error
    assert fake.hits["anthropic"] == 1  # not once per item
    assert fake.hits["google"] == 13 and fake.hits["openai"] == 0
    assert [i.provider for i in items(seeded, result.workflow_id)] == ["google"] * 13
    fallbacks = [e for e in result.events if isinstance(e, ev.ProviderFallback)]
    assert len(fallbacks) == 1
    assert (fallbacks[0].from_provider, fallbacks[0].to_provider, fallbacks[0].reason) == (
        "anthropic",
        "google",
        "exhausted",
    )
    rows = calls(seeded, result.workflow_id)
    assert [r.error_kind for r in rows if r.outcome == "error"] == ["exhausted"]


def test_rate_limit_waits_for_retry_after(seeded, fake):
    fake.script("anthropic", rate_limited(1))
    started = time.perf_counter()
    result = nyxnb.run(fan_spec(1), tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    assert result.ok
    assert time.perf_counter() - started >= 0.95  # retry-after honoured, not the 10 ms backoff
    assert fake.hits["anthropic"] == 2 and fake.hits["google"] == 0
    kinds = [(r.attempt, r.outcome, r.error_kind) for r in calls(seeded, result.workflow_id)]
    assert sorted(kinds) == [(1, "error", "rate_limited"), (2, "ok", None)]


def test_sdk_retries_never_multiply(seeded, fake):
    fake.set_default("anthropic", server_error(500))
    result = nyxnb.run(fan_spec(1), tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    assert result.ok
    assert fake.hits["anthropic"] == FAST.max_attempts  # 3, not 3 x (1 + SDK retries)
    assert fake.hits["google"] == 1


def test_truncated_answer_is_never_stored(seeded, fake):
    fake.script("anthropic", Reply(text="half an ans", stop="max_tokens"))
    result = nyxnb.run(fan_spec(1), tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    assert result.ok
    (item,) = items(seeded, result.workflow_id)
    assert item.provider == "google" and "half an ans" not in item.output
    kinds = {r.provider: r.error_kind for r in calls(seeded, result.workflow_id)}
    assert kinds == {"anthropic": "truncated", "google": None}


def test_tokens_and_cost_match_what_the_server_returned(seeded, fake):
    fake.script("anthropic", Reply(text="ok", input_tokens=1234, output_tokens=567))
    result = nyxnb.run(fan_spec(1), tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    (row,) = calls(seeded, result.workflow_id)
    assert (row.input_tokens, row.output_tokens) == (1234, 567)
    assert row.cost_usd == pytest.approx(price_for("anthropic", row.model).cost(1234, 567))
    assert row.cost_usd > 0 and row.latency_ms > 0


def test_cached_rerun_makes_zero_calls_and_costs_nothing(seeded, fake):
    spec = fan_spec(13, cache=True)
    first = nyxnb.run(spec, tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    hits = dict(fake.hits)
    second = nyxnb.run(spec, tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    assert first.ok and second.ok and fake.hits == hits
    rows = calls(seeded, second.workflow_id)
    assert len(rows) == 13 and all(r.cached and r.cost_usd == 0 for r in rows)


def test_whole_chain_failing_fails_the_step_with_every_reason_then_resume(seeded, fake):
    fake.set_default("anthropic", credit_exhausted())
    fake.set_default("google", server_error(503))
    result = nyxnb.run(
        fan_spec(3, chain=("anthropic", "google")),
        tenant="nyx",
        project="BRbase",
        store=seeded,
        retry=FAST,
    )
    assert result.status == "failed"
    assert "anthropic: exhausted" in result.error and "google: server" in result.error
    failed = [e for e in result.events if isinstance(e, ev.StepFailed)]
    assert failed and failed[0].name == "features"
    fake.reset()  # the operator tops up the credit
    again = nyxnb.resume(result.workflow_id, store=seeded, retry=FAST)
    assert again.ok and fake.hits["anthropic"] == 3


def test_missing_key_skips_the_provider_and_says_which_variable(seeded, fake, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    result = nyxnb.run(fan_spec(2), tenant="nyx", project="BRbase", store=seeded, retry=FAST)
    assert result.ok and fake.hits["anthropic"] == 0 and fake.hits["google"] == 2
    reasons = [e.message for e in result.events if isinstance(e, ev.ProviderFallback)]
    assert any("ANTHROPIC_API_KEY" in m for m in reasons)


def test_budget_guard_stops_before_the_fan_out(seeded, fake):
    result = nyxnb.run(
        fan_spec(13), tenant="nyx", project="BRbase", store=seeded, max_cost_usd=0.01, retry=FAST
    )
    assert result.status == "failed" and "max_cost_usd" in result.error
    assert sum(fake.hits.values()) == 0
    with seeded.session() as s:
        wf = s.get_one(Workflow, result.workflow_id)
        step = s.scalar(select(WorkflowStep).where(WorkflowStep.workflow_id == wf.id))
    assert wf.status == "failed" and step.status == "failed"
