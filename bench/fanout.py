"""Fan-out throughput: nyxnb vs. the physical limit, plain asyncio+sqlite3, and LangGraph.

Workload: N items, simulated provider latency L, concurrency C, one durable commit per item.
Physical limit: ceil(N / C) * L.  Per-item overhead: wall time / N at L = 0.
"""

from __future__ import annotations

import asyncio
import math
import operator
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from bench.common import Measurement, measure

CONCURRENCY = 8


def _spec(n: int) -> dict[str, Any]:
    return {
        "name": f"bench-{n}",
        "defaults": {
            "provider": "offline",
            "fallback": [],
            "concurrency": CONCURRENCY,
            "cache": False,
        },
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "items": [{"heading": f"item {i}"} for i in range(n)],
                "prompt": "Design {{ item.heading }}",
            }
        ],
    }


def _fresh_store(folder: Path) -> Any:
    from nyxnb import open_store
    from nyxnb.store.seed import seed

    store = open_store(f"sqlite:///{folder / f'nyx-{time.perf_counter_ns()}.db'}")
    seed(store)
    return store


def run_nyxnb(n: int, latency_ms: float, folder: Path) -> float:
    """Seconds for nyxnb to run an N-item fan-out on a fresh default-style SQLite store."""
    import nyxnb

    store = _fresh_store(folder)
    started = time.perf_counter()
    result = nyxnb.run(
        _spec(n),
        tenant="nyx",
        project="BRbase",
        store=store,
        provider_options={"offline": {"latency_ms": latency_ms}},
    )
    elapsed = time.perf_counter() - started
    assert result.ok, result.error
    store.dispose()
    return elapsed


def run_nyxnb_sdk(n: int, latency_ms: float, folder: Path) -> float:
    """nyxnb through the real Anthropic SDK against the loopback fake server."""
    import os

    import nyxnb
    from nyxnb.testing import FakeProviderServer, Reply

    store = _fresh_store(folder)
    spec = _spec(n)
    spec["defaults"]["provider"] = "anthropic"
    with FakeProviderServer() as srv:
        srv.set_default("anthropic", Reply(text="ok", latency_ms=latency_ms))
        saved = {k: os.environ.get(k) for k in srv.env()}
        os.environ.update(srv.env())
        try:
            started = time.perf_counter()
            result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=store)
            elapsed = time.perf_counter() - started
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert result.ok, result.error
    store.dispose()
    return elapsed


async def _floor(n: int, latency_ms: float, path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE items (idx INTEGER PRIMARY KEY, output TEXT)")
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with limit:
            if latency_ms:
                await asyncio.sleep(latency_ms / 1000)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO items VALUES (?, ?)", (i, f"answer {i}"))
            conn.execute("COMMIT")

    await asyncio.gather(*(one(i) for i in range(n)))
    conn.close()


def run_floor(n: int, latency_ms: float, folder: Path) -> float:
    """Seconds for plain asyncio + sqlite3 (no engine at all): the floor."""
    path = folder / f"floor-{time.perf_counter_ns()}.db"
    started = time.perf_counter()
    asyncio.run(_floor(n, latency_ms, path))
    return time.perf_counter() - started


class _State(TypedDict):
    items: list[str]
    outputs: Annotated[list[str], operator.add]


def _langgraph_app(latency_ms: float, saver: Any) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    async def item(state):  # noqa: ANN001 - LangGraph evaluates hints at runtime
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        return {"outputs": [f"answer {state['heading']}"]}

    def fan(state):  # noqa: ANN001
        return [Send("item", {"heading": h}) for h in state["items"]]

    graph = StateGraph(_State)
    graph.add_node("item", item)
    graph.add_conditional_edges(START, fan, ["item"])
    graph.add_edge("item", END)
    return graph.compile(checkpointer=saver)


async def _langgraph(n: int, latency_ms: float, path: Path) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        app = _langgraph_app(latency_ms, saver)
        config = {"configurable": {"thread_id": "bench"}, "max_concurrency": CONCURRENCY}
        out = await app.ainvoke({"items": [f"item {i}" for i in range(n)], "outputs": []}, config)
        assert len(out["outputs"]) == n


def run_langgraph(n: int, latency_ms: float, folder: Path) -> float:
    """Seconds for LangGraph (Send + max_concurrency + SQLite checkpointer)."""
    path = folder / f"lg-{time.perf_counter_ns()}.db"
    started = time.perf_counter()
    asyncio.run(_langgraph(n, latency_ms, path))
    return time.perf_counter() - started


def langgraph_available() -> bool:
    """True when the `bench` extra (LangGraph) is installed."""
    try:
        import langgraph.checkpoint.sqlite.aio  # noqa: F401
    except ImportError:
        return False
    return True


def bench_fanout(
    sizes: tuple[int, ...], latencies: tuple[float, ...], repeats: int
) -> list[Measurement]:
    """Every (system, N, L) cell, each the median of `repeats` runs."""
    systems = {"nyxnb": run_nyxnb, "nyxnb+sdk": run_nyxnb_sdk, "asyncio+sqlite3": run_floor}
    if langgraph_available():
        systems["langgraph"] = run_langgraph
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in sizes:
            for latency in latencies:
                limit = math.ceil(n / CONCURRENCY) * latency / 1000
                for name, fn in systems.items():
                    m = measure(
                        f"fan-out {name}",
                        lambda fn=fn, n=n, latency=latency: fn(n, latency, folder),
                        repeats,
                        params={"system": name, "n": n, "latency_ms": latency, "limit_s": limit},
                    )
                    results.append(m)
    return results
