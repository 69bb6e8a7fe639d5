"""Workers sharing a provider's rate budget, and a dead worker's items after kill -9.

Every test runs on SQLite and PostgreSQL, with real worker processes (``nyxnb worker``).
"""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, or_, select, update

import nyxnb
from nyxnb.cli.main import cli
from nyxnb.engine.durable.items import item_rows
from nyxnb.engine.durable.records import load_steps
from nyxnb.engine.workers.claims import ItemClaimer, claim_ttl_s, heartbeat_s
from nyxnb.errors import ClaimLost, ConfigError
from nyxnb.store import open_store
from nyxnb.store.models import LlmCall, StepItem, Workflow, utcnow
from nyxnb.store.seed import seed
from nyxnb.testing import Reply
from tests._launch import stop_all, wait_for_workers, worker_proc
from tests.helpers import claimed_fan_out_step


def _spec(tmp_path, n: int, provider: str = "offline", **defaults: object) -> str:
    body = {
        "name": "shared",
        "defaults": {"provider": provider, "fallback": [], "cache": False, **defaults},
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
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(body))
    return str(path)


def _wait_status(store, workflow_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.session() as s:
            status = s.get_one(Workflow, workflow_id).status
        if status in ("completed", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"workflow still {status} after {timeout}s")


def _ok_calls(store, workflow_id: str) -> dict[int, int]:
    with store.session() as s:
        rows = s.execute(
            select(LlmCall.item_idx, func.count())
            .where(LlmCall.workflow_id == workflow_id, LlmCall.outcome == "ok")
            .group_by(LlmCall.item_idx)
        ).all()
    return {int(i): int(n) for i, n in rows}


def _items(store, workflow_id: str) -> list[StepItem]:
    step_id = load_steps(store, workflow_id)[0].id
    with store.session() as s:
        return list(s.scalars(select(StepItem).where(StepItem.step_id == step_id)).all())


def _held_by(store, workflow_id: str, owner: str) -> int:
    return sum(
        1 for i in _items(store, workflow_id) if i.claimed_by == owner and i.status == "running"
    )


@pytest.mark.slow
def test_workers_together_keep_to_one_provider_rate_budget(store, store_url, tmp_path, fake_server):
    """3 workers x 8 calls in flight on one fan-out against a 600 rpm key (10 a second): the
    pace the fake saw, all workers together, stays within the limit and no 429 fails an item."""
    n, rpm = 60, 600
    seed(store)
    fake_server.limit("openai", rpm=rpm)
    fake_server.set_default("openai", Reply(latency_ms=50))
    procs = [worker_proc(store_url, None, concurrency=8) for _ in range(3)]
    wait_for_workers(store, 3)
    spec = _spec(tmp_path, n, "openai", model="gpt-4o-mini", limits={"openai": {"rpm": rpm}})
    workflow_id = nyxnb.submit(spec, tenant="nyx", project="BRbase", store=store)
    status = _wait_status(store, workflow_id)
    outs = stop_all(procs)
    assert status == "completed", outs
    assert _ok_calls(store, workflow_id) == {i: 1 for i in range(n)}
    committers = {i.claimed_by for i in _items(store, workflow_id)}
    assert len(committers) >= 2  # the fan-out really was shared
    times = sorted(t for p, t in fake_server.arrivals if p == "openai")  # 429s included
    per_s = burst = rpm / 60  # the fake's bucket: 1 s of budget (burst), refilled at rpm/60
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    retried = fake_server.throttled["openai"]  # a 429 comes back as one more arrival
    assert busiest <= burst + per_s + retried, busiest  # no 1 s window over what the key allows
    pace = (len(times) - burst) / (times[-1] - times[0])
    assert pace <= per_s * 1.25, pace  # unshared, each of the 3 would take the whole limit: 3x
    assert fake_server.throttled["openai"] <= 0.15 * len(times)  # the budget, not 429s, paced it
    with store.session() as s:
        failed = s.scalar(
            select(func.count())
            .select_from(LlmCall)
            .where(LlmCall.workflow_id == workflow_id, LlmCall.outcome.not_in(["ok", "sent"]))
            .where(or_(LlmCall.error_kind.is_(None), LlmCall.error_kind != "rate_limited"))
        )
    assert failed == 0  # the few 429s were waited out and retried, never a failure


@pytest.mark.slow
def test_kill_9_takeover_is_bound_by_the_claim_ttl(store, store_url, tmp_path):
    """NYXNB_CLAIM_TTL_S=2: after kill -9 of the lead, the survivor takes its items (and the
    run lease) over in about 2 s, not the default 6; nothing is lost or committed twice."""
    n, ttl = 60, 2.0
    seed(store)
    env = {"NYXNB_CLAIM_TTL_S": str(ttl)}
    procs = [worker_proc(store_url, 150, env=env) for _ in range(2)]
    wait_for_workers(store, 2)
    workflow_id = nyxnb.submit(_spec(tmp_path, n), tenant="nyx", project="BRbase", store=store)
    deadline = time.monotonic() + 60
    while sum(_ok_calls(store, workflow_id).values()) < 12:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with store.session() as s:
        owner = str(s.get_one(Workflow, workflow_id).lease_owner)
    victim = next(p for p in procs if f":{p.pid}:" in owner)
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    held = _held_by(store, workflow_id, owner)
    while _held_by(store, workflow_id, owner):
        assert time.monotonic() - killed < 30
        time.sleep(0.02)
    takeover = time.monotonic() - killed
    status = _wait_status(store, workflow_id)
    outs = stop_all(procs)
    assert status == "completed", outs
    assert held > 0 and takeover < 6.0 - 0.5, (held, takeover)  # under the default TTL
    assert _ok_calls(store, workflow_id) == {i: 1 for i in range(n)}  # none lost, none twice


def test_a_write_from_an_expired_claim_is_refused(store, tmp_path):
    """Fencing with a short TTL: a holder that missed its renewals cannot commit, even when no
    other worker has taken the item yet; a renewed claim commits."""
    from nyxnb.engine.outcomes import ChainResult
    from nyxnb.providers.base import Completion

    step = claimed_fan_out_step(store, _spec(tmp_path, 4), 4)
    late, live = ItemClaimer(store, "late:1:a", ttl_s=1.0), ItemClaimer(store, "live:2:b")
    (first,) = late.claim(step.id, 1)
    (second,) = live.claim(step.id, 1)
    with store.engine.begin() as conn:  # the late holder's TTL ran out without a heartbeat
        conn.execute(
            update(StepItem)
            .where(StepItem.step_id == step.id, StepItem.idx == first.idx)
            .values(claim_expires_at=utcnow() - timedelta(milliseconds=1))
        )
    assert late.renew() == 0  # an expired claim is not renewed either
    result = ChainResult(Completion("x", "end_turn", 1, 1, "offline-1", "offline"), [])
    with pytest.raises(ClaimLost), store.engine.begin() as conn:
        late.write_batch(conn, [item_rows(step, first.idx, "late", result)])
    assert live.renew() == 1
    with store.engine.begin() as conn:
        live.write_batch(conn, [item_rows(step, second.idx, "mine", result)])
    status = {i.idx: i.status for i in _items_of(store, step.id)}
    assert status[first.idx] == "running" and status[second.idx] == "completed"


def _items_of(store, step_id: str) -> list[StepItem]:
    with store.session() as s:
        return list(s.scalars(select(StepItem).where(StepItem.step_id == step_id)).all())


def test_claim_ttl_comes_from_the_option_then_the_environment(monkeypatch):
    assert claim_ttl_s() == 6.0 and heartbeat_s(6.0) == 1.5
    monkeypatch.setenv("NYXNB_CLAIM_TTL_S", "2")
    assert claim_ttl_s() == 2.0 and heartbeat_s(2.0) == 0.5
    assert claim_ttl_s(3.5) == 3.5  # the worker option wins
    monkeypatch.setenv("NYXNB_CLAIM_TTL_S", "soon")
    with pytest.raises(ConfigError, match="NYXNB_CLAIM_TTL_S='soon' is not a number"):
        claim_ttl_s()
    with pytest.raises(ConfigError, match="too short"):
        claim_ttl_s(0.1)


def test_worker_cli_rejects_a_too_short_claim_ttl(sqlite_url):
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "worker", "--claim-ttl", "0.2"])
    assert result.exit_code == 2 and "--claim-ttl" in result.output


@pytest.mark.parametrize("ttl", ["inf", "1e12", "nan"])
def test_an_unbounded_claim_ttl_is_one_line_naming_the_range(
    sqlite_url, tmp_path, monkeypatch, ttl
):
    """``--claim-ttl inf`` (or the environment's) was taken, then the first claim raised
    OverflowError with a traceback: both are refused up front, naming the allowed range."""
    store = open_store(sqlite_url)
    seed(store)
    nyxnb.submit(_spec(tmp_path, 2), tenant="nyx", project="BRbase", store=store)
    store.dispose()
    runner = CliRunner()
    given = runner.invoke(
        cli, ["--db", sqlite_url, "worker", "--exit-when-idle", "--claim-ttl", ttl]
    )
    assert given.exit_code in (1, 2) and "Traceback" not in given.output, given.output
    assert "--claim-ttl" in given.output and "3600" in given.output
    monkeypatch.setenv("NYXNB_CLAIM_TTL_S", ttl)
    from_env = runner.invoke(cli, ["--db", sqlite_url, "worker", "--exit-when-idle"])
    assert from_env.exit_code == 1 and "Traceback" not in from_env.output, from_env.output
    assert "NYXNB_CLAIM_TTL_S" in from_env.output and "1 to 3600 s" in from_env.output
    with pytest.raises(ConfigError, match="out of range"):
        claim_ttl_s(float(ttl))


def test_a_worker_woken_after_its_claims_expired_calls_none_of_them(store, tmp_path):
    """A helper stopped past its claim TTL (SIGSTOP; here its clock jumps) while another worker
    took its items over and committed them: on waking, its item source handed out the items it
    had claimed, so it called them again.  It now asks the store first and drops them."""
    import asyncio

    from nyxnb.engine.durable.items import load_items
    from nyxnb.engine.outcomes import ChainResult
    from nyxnb.providers.base import Completion

    step = claimed_fan_out_step(store, _spec(tmp_path, 6), 6)
    sleeper = ItemClaimer(store, "sleeper:1:a", ttl_s=1.0)
    source = sleeper.source(step.id, load_items(store, step.id), 4, lead=False)
    result = ChainResult(Completion("x", "end_turn", 1, 1, "offline-1", "offline"), [])

    async def scenario() -> list[int]:
        started = [(await source.next()).idx]  # claims items 0-3, starts item 0
        with store.engine.begin() as conn:  # ... then stands still past its TTL
            conn.execute(
                update(StepItem)
                .where(StepItem.step_id == step.id)
                .values(claim_expires_at=utcnow() - timedelta(seconds=1))
            )
        other = ItemClaimer(store, "other:2:b")
        taken = other.claim(step.id, 6)  # the expired items, and the two never claimed
        with store.engine.begin() as conn:
            other.write_batch(conn, [item_rows(step, c.idx, "theirs", result) for c in taken[1:]])
        sleeper.clock = lambda: time.monotonic() + 60  # it wakes up
        while (row := await source.next()) is not None:
            started.append(row.idx)
        return started

    assert asyncio.run(scenario()) == [0]  # nothing started after waking
    assert sleeper.held == {} and sleeper.lost == 4  # it knows it lost them (item 0 too)
    committed = {i.idx: i.claimed_by for i in _items_of(store, step.id) if i.output == "theirs"}
    assert committed == {i: "other:2:b" for i in range(1, 6)}


def test_a_heartbeat_drops_claims_taken_over_by_another_worker(store, tmp_path):
    step = claimed_fan_out_step(store, _spec(tmp_path, 3), 3)
    mine, other = ItemClaimer(store, "mine:1:a", ttl_s=1.0), ItemClaimer(store, "other:2:b")
    assert len(mine.claim(step.id, 3)) == 3
    with store.engine.begin() as conn:
        conn.execute(
            update(StepItem)
            .where(StepItem.step_id == step.id, StepItem.idx == 1)
            .values(claim_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert [c.idx for c in other.claim(step.id, 3)] == [1]
    assert mine.renew() == 2 and set(mine.held) == {(step.id, 0), (step.id, 2)}
    assert mine.still_holds(step.id, 0) and not mine.still_holds(step.id, 1)


def test_an_item_in_flight_whose_claim_came_back_is_not_called_twice(store, tmp_path):
    """Under load a worker's claim on an item it is calling can expire and be claimed back by
    its own refill: the source handed the item out a second time (two paid calls, two ledger
    rows).  The new claim now only serves the call already in flight."""
    import asyncio

    from nyxnb.engine.durable.items import load_items

    step = claimed_fan_out_step(store, _spec(tmp_path, 5), 5)
    claimer = ItemClaimer(store, "busy:1:a", ttl_s=1.0)
    source = claimer.source(step.id, load_items(store, step.id), 2, lead=False)

    async def scenario() -> list[int]:
        started = [(await source.next()).idx]  # item 0 in flight ...
        with store.engine.begin() as conn:  # ... while its claim runs out (a starved heartbeat)
            conn.execute(
                update(StepItem)
                .where(StepItem.step_id == step.id, StepItem.idx == 0)
                .values(claim_expires_at=utcnow() - timedelta(seconds=1))
            )
        while (row := await source.next()) is not None:
            started.append(row.idx)
        return started

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]
    generation = claimer.held[(step.id, 0)]
    assert generation == 2  # claimed back: the call in flight commits under the new claim
