"""Prompt caching: Anthropic cache_control on the persona and a fan-out's shared prefix."""

from __future__ import annotations

import pytest
from sqlalchemy import select

import nyxnb
from nyxnb.providers.pricing import price_for
from nyxnb.store.models import LlmCall, WorkflowStep
from nyxnb.store.seed import seed
from nyxnb.testing.batches import FakeBatchServer

SHARED = " ".join(f"context{i % 97}" for i in range(2000))  # a 2,000-token shared prefix
N_ITEMS = 20


def _spec(batch: bool) -> dict:
    return {
        "name": "cached",
        "defaults": {
            "provider": "anthropic",
            "fallback": [],
            "cache": False,
            "concurrency": 4,
            "batch_poll": {"initial_s": 0.05, "max_s": 0.1},
        },  # fmt: skip
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "batch": batch,
                "items": [{"heading": f"Feature {i}"} for i in range(N_ITEMS)],
                "prompt": SHARED + "\n\nDesign {{ item.heading }}",
            }
        ],
    }


def _calls(store, workflow_id):
    with store.session() as s:
        step = s.scalar(select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id))
        calls = s.scalars(select(LlmCall).where(LlmCall.step_id == step.id)).all()
        s.expunge_all()
    return calls


@pytest.mark.parametrize("batch", [False, True])
def test_shared_prefix_costs_at_most_035_of_uncached_input(sqlite_store, monkeypatch, batch):
    seed(sqlite_store)
    with FakeBatchServer(live_caching=True) as srv:
        srv.patch_env(monkeypatch)
        result = nyxnb.run(_spec(batch), tenant="nyx", project="BRbase", store=sqlite_store)
        assert result.ok, result.error
        sent = [b for _, path, b in srv.requests if path == "/v1/messages"]
        sent += [r["params"] for b in srv.batches.batches.values() for r in b.requests]
    first = sent[0]["messages"][0]["content"]
    assert first[0]["cache_control"] == {"type": "ephemeral"} and SHARED in first[0]["text"]
    assert first[1]["text"].strip().isdigit()  # only the item's own part is left uncached
    assert sent[0]["system"][0]["cache_control"] == {"type": "ephemeral"}
    calls = _calls(sqlite_store, result.workflow_id)
    assert len(calls) == N_ITEMS
    assert sum(c.cache_write_tokens > 0 for c in calls) == 1  # written once, read after
    assert all(c.cached_input_tokens >= 2000 for c in calls if c.cache_write_tokens == 0)
    price = price_for("anthropic", "claude-haiku-4-5")
    uncached = sum(c.input_tokens for c in calls) * price.input / 1e6
    output = sum(c.output_tokens for c in calls) * price.output / 1e6
    share = 0.5 if batch else 1.0
    input_cost = sum(c.cost_usd for c in calls) / share - output
    assert input_cost <= 0.35 * uncached, (input_cost, uncached)
