"""Batch polling that survives a day: backoff, transient poll failures, outages, the deadline."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

import nyxnb
from nyxnb.engine.batch.poll import Backoff
from nyxnb.errors import SpecError
from nyxnb.spec import BatchPoll, load_spec
from nyxnb.store.models import WorkflowStep
from nyxnb.store.seed import seed
from nyxnb.testing import rate_limited, reset, server_error
from nyxnb.testing.batches import FakeBatchServer
from tests.batch_helpers import N_ITEMS, batch_spec, fan_out, ok_items


def _poll_spec(fallback: str = "resubmit", **poll: float) -> dict:
    spec = batch_spec(fallback=fallback)
    spec["defaults"]["batch_poll"] = {"initial_s": 0.05, "max_s": 0.2, "multiplier": 2.0, **poll}
    return spec


@pytest.fixture
def slow_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer(delay_s=60.0) as srv:  # a batch that would take a minute
        srv.patch_env(monkeypatch)
        yield srv


def _polls(result, **match) -> list:
    return [
        e
        for e in result.events
        if e.type == "batch_progress" and all(getattr(e, k) == v for k, v in match.items())
    ]


def _cancels(srv: FakeBatchServer) -> list[str]:
    return [path for method, path in srv.batches.calls if path.endswith("/cancel")]


# --- the backoff --------------------------------------------------------------------------------


def test_default_backoff_goes_from_seconds_to_minutes_and_a_day_is_a_few_hundred_polls() -> None:
    backoff = Backoff(BatchPoll())
    delays, elapsed = [], 0.0
    while elapsed < 24 * 3600:
        delays.append(backoff.next())
        elapsed += delays[-1]
    assert delays[:3] == [5.0, 7.5, 11.25]
    assert delays == sorted(delays) and max(delays) == 300.0
    assert sum(d < 300 for d in delays) <= 12  # at the cap within a dozen polls (~15 min)
    assert 280 <= len(delays) <= 300  # not one poll every 5 s for a day (17,280)
    backoff.reset()
    assert backoff.next() == 5.0


def test_polls_back_off_up_to_max_s(sqlite_store, monkeypatch) -> None:
    seed(sqlite_store)
    with FakeBatchServer(delay_s=1.2) as srv:
        srv.patch_env(monkeypatch)
        result = nyxnb.run(_poll_spec(), tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    waits = [e.poll_s for e in _polls(result) if e.poll_s]
    assert waits[:3] == [0.05, 0.1, 0.2] and set(waits[2:]) == {0.2}
    assert _polls(result)[-1].poll_s == 0.0 and _polls(result)[-1].done == N_ITEMS


def test_max_s_below_initial_s_is_a_clear_spec_error() -> None:
    spec = _poll_spec(initial_s=10.0, max_s=1.0)
    with pytest.raises(SpecError, match=r"batch_poll.max_s \(1\) must be at least initial_s"):
        load_spec(spec)
    with pytest.raises(SpecError, match="deadline_h"):
        load_spec(_poll_spec(deadline_h=0))
    assert load_spec(_poll_spec(deadline_h=0.25)).defaults.batch_poll.deadline_h == 0.25


# --- transient failures and outages -----------------------------------------------------------


def test_transient_poll_failures_are_retried_and_the_step_completes(sqlite_store, monkeypatch):
    seed(sqlite_store)
    with FakeBatchServer(delay_s=0.5) as srv:
        srv.patch_env(monkeypatch)
        srv.fail_polls(server_error(500), rate_limited(0.3), reset(), server_error(503))
        result = nyxnb.run(_poll_spec(), tenant="nyx", project="BRbase", store=sqlite_store)
        assert result.ok, result.error
        assert not srv.poll_faults  # every fault was served
        assert len(srv.batches.batches) == 1  # the same batch, polled again
    failed = [e for e in _polls(result) if e.error]
    assert len(failed) == 4
    assert "server" in failed[0].error and "rate_limited" in failed[1].error
    assert "connection" in failed[2].error
    assert failed[1].poll_s >= 0.3  # no sooner than the provider's retry-after
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert {i.status for i in items} == {"completed"} and [b.state for b in batches] == ["ended"]
    assert ok_items(calls) == list(range(N_ITEMS))


def test_a_long_outage_pauses_with_the_batch_open_and_resume_polls_it_again(
    sqlite_store, monkeypatch
):
    seed(sqlite_store)
    with FakeBatchServer(delay_s=0.2) as srv:
        srv.patch_env(monkeypatch)
        srv.fail_polls(*[server_error(503)] * 1000)
        spec = _poll_spec(max_outage_s=0.6)
        result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
        assert result.status == "paused", result.error
        last = _polls(result)[-1]
        assert "pausing, the batch stays open" in last.error
        assert f"nyxnb resume {result.workflow_id}" in last.error
        items, _, batches = fan_out(sqlite_store, result.workflow_id)
        assert [b.state for b in batches] == ["open"]  # not lost, not failed
        with sqlite_store.session() as s:
            query = select(WorkflowStep).where(WorkflowStep.workflow_id == result.workflow_id)
            step = s.scalar(query.where(WorkflowStep.name == "features"))
            assert step is not None and step.status == "pending" and not step.error

        srv.poll_faults.clear()  # the provider is back
        again = nyxnb.resume(result.workflow_id, store=sqlite_store)
        assert again.ok, again.error
        assert len(srv.batches.batches) == 1  # re-adopted, never submitted twice
    items, calls, batches = fan_out(sqlite_store, result.workflow_id)
    assert [b.state for b in batches] == ["ended"] and ok_items(calls) == list(range(N_ITEMS))


# --- the deadline -----------------------------------------------------------------------------


def test_past_its_deadline_a_batch_is_canceled_and_the_rest_runs_live(sqlite_store, slow_batches):
    seed(sqlite_store)
    spec = _poll_spec(fallback="live", deadline_h=0.3 / 3600)  # 0.3 s
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    assert _cancels(slow_batches) == ["/v1/messages/batches/msgbatch_fake0001/cancel"]
    assert len(slow_batches.batches.batches) == 1
    assert any(e.canceling for e in _polls(result))
    _, calls, batches = fan_out(sqlite_store, result.workflow_id)
    ok = [c for c in calls if c.outcome == "ok"]
    assert ok_items(calls) == list(range(N_ITEMS))  # nothing lost, nothing bought twice
    assert sorted(c.item_idx for c in ok if c.service_tier == "batch") == list(range(0, 12, 2))
    assert sorted(c.item_idx for c in ok if c.service_tier == "live") == list(range(1, 12, 2))
    assert sorted(c.error_kind for c in calls if c.outcome == "error") == ["canceled"] * 6
    assert [b.state for b in batches] == ["ended"]


def test_deadline_cancel_with_resubmit_ends_in_rounds_then_live(sqlite_store, slow_batches):
    """Canceled items go to a new batch (its own deadline); after the last round, live."""
    seed(sqlite_store)
    spec = _poll_spec(fallback="resubmit", deadline_h=0.3 / 3600)
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    sizes = [len(b.requests) for b in slow_batches.batches.batches.values()]
    assert sizes == [12, 6, 3] and len(_cancels(slow_batches)) == 3
    _, calls, batches = fan_out(sqlite_store, result.workflow_id)
    ok = [c for c in calls if c.outcome == "ok"]
    assert ok_items(calls) == list(range(N_ITEMS))  # every item exactly once
    assert sum(c.service_tier == "batch" for c in ok) == 6 + 3 + 2
    assert [c.item_idx for c in ok if c.service_tier == "live"] == [7]  # the last leftover
    assert {b.state for b in batches} == {"ended"}
    ids = slow_batches.batches.submitted_ids()
    assert len(set(ids)) == N_ITEMS  # a resubmitted item keeps its custom id
