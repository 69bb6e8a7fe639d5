"""Workers sharing one fan-out on PostgreSQL: throughput with W = 1, 2, 4 and a kill -9 mid-run.

    NYXNB_TEST_PG_URL=... .venv/bin/python -m bench.workers [--items 2000] [--latency-ms 200]
        [--repeat 3] [--kill-ttl 6 --kill-ttl 2]

Each run: W ``nyxnb worker --concurrency C`` processes start (and register) first, then one
N-item fan-out is submitted; the clock runs from submit to ``completed``.  The W = 1, 2, 4 runs
are interleaved ``--repeat`` times and medians reported; throughput is set against W x the
one-worker pace of the same session.  The kill runs start 2 workers against the loopback fake
(so every provider call is counted, also those a killed worker never committed) with the given
claim TTL, kill the lead with SIGKILL at ~40% and report items lost, calls repeated, the dead
worker's calls in flight (its unsettled 'sent' ledger rows) and the time until the items it held
were taken over.  ``claim cost`` is the per-item difference between one worker leading the
fan-out (claims, fenced commits, refills, release) and a plain run of it (no claims), at L = 0
so nothing hides the overhead, in-process, median of the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import create_engine, event, func, select, text

from nyxnb.engine.durable.items import sync_items
from nyxnb.engine.durable.records import load_steps
from nyxnb.engine.runner import Runner
from nyxnb.engine.workers import queue
from nyxnb.engine.workers.claims import ItemClaimer
from nyxnb.engine.workers.worker import Worker, WorkerOptions, live_workers
from nyxnb.engine.workflows import create_workflow
from nyxnb.store import Store, open_store
from nyxnb.store.models import LlmCall, StepItem, Workflow
from nyxnb.testing import FakeProviderServer
from nyxnb.testing.server import Reply, prompt_of
from tests.helpers import minimal


def _spec(n: int, provider: str, concurrency: int) -> dict[str, Any]:
    return {
        "name": "bench-workers",
        "defaults": {
            "provider": provider,
            "fallback": [],
            "concurrency": concurrency,
            "cache": False,
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


def _fresh_db(server: str) -> tuple[str, str]:
    name = "nyxbench_" + uuid.uuid4().hex[:10]
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + name, name


def _drop_db(server: str, name: str) -> None:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _start(url: str, w: int, c: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "nyxnb", "worker", "--concurrency", str(c)]
    return [
        subprocess.Popen(
            cmd,
            env={**os.environ, **env, "NYXNB_DB_URL": url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(w)
    ]


def _wait_registered(store: Store, w: int) -> None:
    deadline = time.monotonic() + 60
    while len(live_workers(store)) < w:
        if time.monotonic() > deadline:
            raise SystemExit("workers did not start")
        time.sleep(0.05)


def _done(store: Store, workflow_id: str) -> int:
    with store.reading() as conn:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(StepItem)
                .where(StepItem.status == "completed")
                .where(StepItem.step_id == load_steps(store, workflow_id)[0].id)
            )
            or 0
        )


def _status(store: Store, workflow_id: str) -> str:
    with store.reading() as conn:
        return str(conn.scalar(select(Workflow.status).where(Workflow.id == workflow_id)))


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        p.wait(timeout=60)


def _commit_span(store: Store, workflow_id: str) -> float:
    """Seconds from the first item commit to the last (the fan-out itself, no setup)."""
    step_id = load_steps(store, workflow_id)[0].id
    with store.reading() as conn:
        first, last = conn.execute(
            select(func.min(StepItem.updated_at), func.max(StepItem.updated_at)).where(
                StepItem.step_id == step_id
            )
        ).one()
    return float((last - first).total_seconds())


def throughput(server: str, w: int, n: int, latency_ms: int, c: int) -> tuple[float, float]:
    """Seconds for W workers to finish an N-item fan-out: submit to done, first to last commit."""
    url, name = _fresh_db(server)
    store = minimal(open_store(url))
    procs = _start(url, w, c, {"NYXNB_OFFLINE_LATENCY_MS": str(latency_ms)})
    try:
        _wait_registered(store, w)
        started = time.perf_counter()
        wf = queue.submit(store, _spec(n, "offline", c), tenant="nyx", project="BRbase")
        while _status(store, wf) not in ("completed", "failed"):
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        assert _status(store, wf) == "completed" and _done(store, wf) == n
        return seconds, _commit_span(store, wf)
    finally:
        _stop(procs)
        store.dispose()
        _drop_db(server, name)


def kill_run(server: str, n: int, latency_ms: int, c: int, ttl_s: float) -> dict[str, Any]:
    """2 workers, the lead killed -9 at ~40%: items lost, calls repeated, takeover time."""
    url, name = _fresh_db(server)
    store = minimal(open_store(url))
    with FakeProviderServer() as fake:
        fake.set_default("openai", Reply(latency_ms=latency_ms))
        os.environ.update(fake.env())  # submit checks the key is there
        procs = _start(url, 2, c, {**fake.env(), "NYXNB_CLAIM_TTL_S": str(ttl_s)})
        try:
            _wait_registered(store, 2)
            wf = queue.submit(store, _spec(n, "openai", c), tenant="nyx", project="BRbase")
            while _done(store, wf) < n * 0.4:
                time.sleep(0.01)
            with store.reading() as conn:
                owner = conn.scalar(select(Workflow.lease_owner).where(Workflow.id == wf))
            victim = next(p for p in procs if f":{p.pid}:" in str(owner))
            victim.send_signal(signal.SIGKILL)
            killed_at = time.perf_counter()
            held = _held_by(store, str(owner))
            while _held_by(store, str(owner)) > 0:
                time.sleep(0.02)
            takeover = time.perf_counter() - killed_at
            while _status(store, wf) not in ("completed", "failed"):
                time.sleep(0.05)
            counts = Counter(prompt_of(p, body) for p, _, body in list(fake.requests))
            done = _done(store, wf)
            in_flight = _unsettled(store, wf)
        finally:
            _stop(procs)
            store.dispose()
            _drop_db(server, name)
    repeats = sum(k - 1 for k in counts.values() if k > 1)
    return {
        "claim_ttl_s": ttl_s,
        "items": n,
        "lost": n - done,
        "repeated_calls": repeats,
        "victim_in_flight": in_flight,
        "held_by_victim": held,
        "in_flight_limit": c,
        "takeover_s": round(takeover, 2),
    }


def _unsettled(store: Store, workflow_id: str) -> int:
    """'sent' ledger rows left: calls the dead worker had sent and never saw answered."""
    with store.reading() as conn:
        query = select(func.count()).where(
            LlmCall.workflow_id == workflow_id, LlmCall.outcome == "sent"
        )
        return int(conn.scalar(query) or 0)


def _held_by(store: Store, owner: str) -> int:
    with store.reading() as conn:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(StepItem)
                .where(StepItem.claimed_by == owner, StepItem.status == "running")
            )
            or 0
        )


def claim_cost(server: str, n: int, c: int, repeat: int) -> dict[str, float]:
    """What claims add per item: one worker leading an N-item fan-out vs a plain run, L = 0.

    Wall time on a shared machine is noisy, so the runs alternate, and the difference is given
    from the medians and from the minima (the least disturbed runs); the SQL statements per
    item (one per round-trip; an executemany counts once) do not depend on the load at all.
    """
    os.environ["NYXNB_OFFLINE_LATENCY_MS"] = "0"
    plain, claimed = [], []
    for _ in range(repeat):
        plain.append(_one_fan_out(server, n, c, claims=False))
        claimed.append(_one_fan_out(server, n, c, claims=True))
    ms = 1000 / n
    p, w = statistics.median(s for s, _ in plain), statistics.median(s for s, _ in claimed)
    p_min, w_min = min(s for s, _ in plain), min(s for s, _ in claimed)
    return {
        "plain_ms_per_item": round(p * ms, 3),
        "worker_ms_per_item": round(w * ms, 3),
        "claim_ms_per_item": round((w - p) * ms, 3),
        "claim_ms_per_item_min": round((w_min - p_min) * ms, 3),
        "plain_statements_per_item": round(plain[0][1] / n, 2),
        "worker_statements_per_item": round(claimed[0][1] / n, 2),
        "claim_only_ms_per_item": round(_claim_loop(server, n), 3),
    }


def _one_fan_out(server: str, n: int, c: int, *, claims: bool) -> tuple[float, int]:
    """(seconds, SQL statements) of one in-process run of the fan-out, with claims or without."""
    url, name = _fresh_db(server)
    store = minimal(open_store(url))
    statements = [0]

    def count(*_a: object) -> None:
        statements[0] += 1

    try:
        spec = _spec(n, "offline", c)
        if claims:
            queue.submit(store, spec, tenant="nyx", project="BRbase")
            worker = Worker(store, WorkerOptions(concurrency=c, exit_when_idle=True, poll_s=0.01))
            event.listen(store.engine, "before_cursor_execute", count)
            started = time.perf_counter()
            asyncio.run(worker.run())
        else:
            wf = create_workflow(store, spec, tenant="nyx", project="BRbase")
            event.listen(store.engine, "before_cursor_execute", count)
            started = time.perf_counter()
            asyncio.run(Runner(store, wf, emit=lambda _e: None).execute())
        return time.perf_counter() - started, statements[0]
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
        store.dispose()
        _drop_db(server, name)


def _claim_loop(server: str, n: int) -> float:
    """Milliseconds per item to claim N items in batches of 8 (the claim statements alone)."""
    url, name = _fresh_db(server)
    store = minimal(open_store(url))
    try:
        wf = queue.submit(store, _spec(n, "offline", 8), tenant="nyx", project="BRbase")
        step = load_steps(store, wf)[0]
        sync_items(store, step, [(f"h{i}", f"in{i}", f"x{i}") for i in range(n)])
        claimer = ItemClaimer(store, "bench:1:x")
        started = time.perf_counter()
        while claimer.claim(step.id, 8):
            pass
        return (time.perf_counter() - started) * 1000 / n
    finally:
        store.dispose()
        _drop_db(server, name)


def _scaling(server: str, n: int, lat: int, c: int, repeat: int) -> dict[int, dict[str, Any]]:
    """W = 1, 2, 4 interleaved ``repeat`` times (so load drifts hit every W alike); medians."""
    walls: dict[int, list[float]] = {1: [], 2: [], 4: []}
    spans: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for r in range(repeat):
        for w in walls:
            seconds, span = throughput(server, w, n, lat, c)
            walls[w].append(seconds)
            spans[w].append(span)
            print(f"  round {r + 1} W={w}: {seconds:.2f}s (fan-out {span:.2f}s)", flush=True)
    one, one_span = statistics.median(walls[1]), statistics.median(spans[1])
    limit1 = n / c * lat / 1000
    out = {}
    for w in walls:
        seconds, span = statistics.median(walls[w]), statistics.median(spans[w])
        out[w] = {
            "seconds": round(seconds, 2),
            "runs": [round(x, 2) for x in walls[w]],
            "items_per_s": round(n / seconds, 1),
            "speedup": round(one / seconds, 2),
            "vs_w_x_one": round(one / seconds / w, 3),
            "x_limit": round(seconds / (limit1 / w), 3),
            "fan_out_s": round(span, 2),
            "fan_out_speedup": round(one_span / span, 2),
        }
        print(
            f"W={w}: median {seconds:.2f}s of {len(walls[w])} -> {one / seconds:.2f}x one "
            f"({one / seconds / w:.1%} of W x one-worker pace); fan-out {span:.2f}s "
            f"({one_span / span:.2f}x one)",
            flush=True,
        )
    return out


def main() -> None:
    """Run the worker benchmark and print a JSON summary."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kill-ttl", type=float, action="append", help="claim TTL of a kill run")
    ap.add_argument("--skip", action="append", default=[], choices=["scaling", "kill", "claims"])
    args = ap.parse_args()
    server = os.environ.get("NYXNB_TEST_PG_URL")
    if not server:
        raise SystemExit("set NYXNB_TEST_PG_URL to a PostgreSQL server URL")
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    n, lat, c = args.items, args.latency_ms, args.concurrency
    out: dict[str, Any] = {"items": n, "latency_ms": lat, "concurrency": c}
    if "scaling" not in args.skip:
        out["runs"] = _scaling(server, n, lat, c, args.repeat)
    if "kill" not in args.skip:
        out["kill"] = []
        for ttl in args.kill_ttl or [6.0, 2.0]:
            out["kill"].append(kill_run(server, max(n // 2, 100), lat, c, ttl))
            print("kill -9:", out["kill"][-1], flush=True)
    if "claims" not in args.skip:
        out["claims"] = claim_cost(server, n, c, args.repeat)
        print("claims:", out["claims"], flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
