"""Rate limits and the reliability of the chain, through the real SDKs against the loopback fake.

A 429 that is a rate limit waits and goes again (never failing an item or marking a provider
down); quota exhaustion still marks the provider down at once; concurrent blips do not trip the
circuit breaker; empty answers are never stored or cached; a hung provider falls back within its
timeout and a pause is seen while it hangs.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

import nyxnb
from nyxnb import events as ev
from nyxnb.engine import api
from nyxnb.store.models import LlmCache, LlmCall, RateBucket, StepItem, WorkflowStep
from nyxnb.store.seed import seed
from nyxnb.testing import (
    FakeProviderServer,
    empty,
    flaky,
    gemini_quota_exhausted,
    hang,
    insufficient_quota,
    rate_limited,
)

FAST = nyxnb.RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02)
PROVIDERS = ["openai", "anthropic", "google"]


@pytest.fixture
def fake(monkeypatch):
    with FakeProviderServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv


@pytest.fixture
def seeded(sqlite_store):
    seed(sqlite_store)
    return sqlite_store


def spec(n: int, chain: tuple[str, ...], concurrency: int = 4, **defaults: object) -> dict:
    return {
        "name": "limits",
        "defaults": {
            "provider": chain[0],
            "fallback": list(chain[1:]),
            "cache": False,
            "concurrency": concurrency,
            **defaults,
        },
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "items": [{"heading": f"Feature {i}"} for i in range(n)],
                "prompt": "Design {{ item.heading }}",
            }
        ],
    }


def run(store, fake_spec: dict, **kw: object) -> nyxnb.RunResult:
    return nyxnb.run(fake_spec, tenant="nyx", project="BRbase", store=store, retry=FAST, **kw)


def items(store, workflow_id: str) -> list[StepItem]:
    with store.session() as s:
        query = select(StepItem).join(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id)
        return list(s.scalars(query.order_by(StepItem.idx)).all())


def calls(store, workflow_id: str) -> list[LlmCall]:
    with store.session() as s:
        return list(s.scalars(select(LlmCall).where(LlmCall.workflow_id == workflow_id)).all())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_fan_out_four_times_wider_than_the_limit_finishes_every_item(seeded, fake, provider):
    fake.limit(provider, rpm=600, tpm=2_000_000)  # 10 requests a second, a burst of 10
    started = time.perf_counter()
    result = run(seeded, spec(40, (provider,), concurrency=40))  # nothing configured
    wall = time.perf_counter() - started
    assert result.ok, result.error
    rows = items(seeded, result.workflow_id)
    assert [r.status for r in rows] == ["completed"] * 40
    assert {r.provider for r in rows} == {provider}
    assert not [e for e in result.events if isinstance(e, ev.ProviderFallback)]
    attempts = calls(seeded, result.workflow_id)
    limited = [a for a in attempts if a.error_kind == "rate_limited"]
    assert len(limited) == fake.throttled[provider]  # every 429 is a recorded attempt
    # learned the pace, did not hammer: 40 at once against a burst of 10 draws 30 429s in the
    # first wave alone. Gemini sends no limit headers, so it is learned from 429s only, and on
    # a loaded machine the probes land a little less evenly (13 seen once under load).
    assert fake.throttled[provider] <= (16 if provider == "google" else 12)
    assert wall >= 2.5  # it did wait: (40 - 10) / 10 per second


def test_rate_limited_waits_are_reported(seeded, fake):
    fake.limit("openai", rpm=120)  # 2 a second
    result = run(seeded, spec(10, ("openai",), concurrency=10))
    assert result.ok, result.error
    waits = [e for e in result.events if isinstance(e, ev.RateLimited)]
    assert waits and waits[0].provider == "openai" and waits[0].rpm == 120
    assert waits[0].summary == "waiting for openai: 120 rpm"


@pytest.mark.parametrize(
    ("provider", "exhausted"),
    [("openai", insufficient_quota()), ("google", gemini_quota_exhausted())],
)
def test_quota_429_marks_provider_down_at_once_after_rate_limit_429s(
    seeded, fake, provider, exhausted
):
    fake.script(provider, rate_limited(0.05), rate_limited(0.05), rate_limited(0.05), exhausted)
    result = run(seeded, spec(6, (provider, "anthropic")))
    assert result.ok, result.error
    assert fake.hits[provider] == 4  # three rate limits waited out, then one quota answer
    assert {r.provider for r in items(seeded, result.workflow_id)} == {"anthropic"}
    (fallback,) = [e for e in result.events if isinstance(e, ev.ProviderFallback)]
    assert fallback.from_provider == provider and fallback.reason == "exhausted"


def test_concurrent_items_each_seeing_one_503_do_not_mark_the_provider_down(seeded, fake):
    fake.set_default("openai", flaky(1))  # every item's first call is a 503, its retry works
    result = run(seeded, spec(12, ("openai",), concurrency=12))
    assert result.ok, result.error
    assert [r.status for r in items(seeded, result.workflow_id)] == ["completed"] * 12
    assert fake.hits["openai"] == 24


def test_sequential_failures_still_trip_the_breaker(seeded, fake):
    fake.set_default("openai", flaky(100))
    result = run(seeded, spec(6, ("openai", "anthropic"), concurrency=1))
    assert result.ok, result.error
    # item 1: three failed calls (two of them retries), item 2: a first call and a failed
    # retry, the third in a row: down for the run
    assert fake.hits["openai"] == 5
    assert fake.hits["anthropic"] == 6


@pytest.mark.parametrize("provider", PROVIDERS)
def test_empty_answers_go_to_the_next_provider_and_are_never_cached(seeded, fake, provider):
    other = "anthropic" if provider != "anthropic" else "openai"
    fake.set_default(provider, empty())
    first = run(seeded, spec(3, (provider, other), cache=True))
    assert first.ok, first.error
    rows = items(seeded, first.workflow_id)
    assert {r.provider for r in rows} == {other} and all(r.output.strip() for r in rows)
    kinds = {a.error_kind for a in calls(seeded, first.workflow_id) if a.provider == provider}
    assert kinds == {"empty"}
    with seeded.session() as s:
        assert all(c.text.strip() for c in s.scalars(select(LlmCache)).all())
    fake.reset()
    second = run(seeded, spec(3, (provider,), cache=True))
    assert second.ok, second.error
    assert all(r.output.strip() for r in items(seeded, second.workflow_id))
    assert fake.hits[provider] == 3  # nothing empty was cached for it


def test_hung_provider_falls_back_within_the_configured_timeout(seeded, fake):
    fake.set_default("anthropic", hang(60))
    started = time.perf_counter()
    result = run(seeded, spec(4, ("anthropic", "openai"), timeouts={"anthropic": 0.5}))
    assert result.ok, result.error
    assert time.perf_counter() - started < 6
    assert {r.provider for r in items(seeded, result.workflow_id)} == {"openai"}
    assert "timeout" in {a.error_kind for a in calls(seeded, result.workflow_id)}


def test_pause_is_seen_promptly_while_a_provider_hangs(seeded, fake):
    fake.set_default("anthropic", hang(120))
    events: list[ev.Event] = []
    started = threading.Event()

    def consume() -> None:
        for event in api.run_iter(
            spec(4, ("anthropic",)), tenant="nyx", project="BRbase", store=seeded, retry=FAST
        ):
            events.append(event)
            started.set()

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    assert started.wait(10)
    time.sleep(0.5)
    asked = time.perf_counter()
    api.pause(events[0].workflow_id, store=seeded)
    worker.join(timeout=15)
    assert not worker.is_alive()
    assert time.perf_counter() - asked < 6  # not the 30 s timeout, nor 120 s of hanging
    assert isinstance(events[-1], ev.WorkflowPaused)


def test_cli_timeout_and_limit_flags_reach_the_run(seeded, fake, tmp_path, sqlite_url):
    import json

    from click.testing import CliRunner

    from nyxnb.cli import cli

    fake.set_default("anthropic", hang(60))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec(2, ("anthropic", "openai"))))
    args = ["--db", sqlite_url, "--json", "run", str(path), "--tenant", "nyx"]
    args += ["--project", "BRbase", "--timeout", "anthropic=0.5"]
    args += ["--limit", "openai:rpm=6000,concurrency=2"]
    started = time.perf_counter()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 8
    assert fake.hits["openai"] == 2


@pytest.mark.parametrize("bad", ["openai", "openai:rpm", "openai:rpm=x", ":rpm=5", "openai:q=1"])
def test_cli_rejects_a_bad_limit_in_one_line(sqlite_url, tmp_path, bad):
    from click.testing import CliRunner

    from nyxnb.cli import cli

    path = tmp_path / "spec.json"
    path.write_text("{}")
    args = ["--db", sqlite_url, "run", str(path), "--tenant", "t", "--project", "p"]
    result = CliRunner().invoke(cli, [*args, "--limit", bad])
    assert result.exit_code == 2
    assert "PROVIDER:rpm=N" in result.output


def test_two_runs_on_one_store_share_the_provider_budget(seeded, fake):
    fake.limit("openai", rpm=600)  # 10 a second for both runs together
    results: list[nyxnb.RunResult] = []

    def one() -> None:
        results.append(run(seeded, spec(30, ("openai",), concurrency=16)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2 and all(r.ok for r in results), [r.error for r in results]
    assert time.perf_counter() - started >= 4.5  # (60 - 10) / 10 per second: the key's pace
    calls = fake.hits["openai"] + fake.throttled["openai"]
    # alone, each would take the whole limit: about half the calls would be refused; a shared
    # budget keeps refusals to the jitter of a loaded machine (7 of 67 seen beside another suite)
    assert fake.throttled["openai"] <= 0.2 * calls
    with seeded.session() as s:
        (bucket,) = s.scalars(select(RateBucket)).all()
    assert bucket.id == "openai:gpt-4o-mini:requests" and bucket.per_min == 600
