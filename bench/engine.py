"""Persistence growth, resume after kill -9, cached re-run, import time and peak memory."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Measurement, python_seconds
from bench.fanout import _fresh_store, _spec

ROOT = Path(__file__).resolve().parent.parent


def commit_growth(n: int = 10_000) -> dict[str, Any]:
    """Commit time of item k (one transaction each, k = 1..N): first 10% vs last 10%.

    Flat means O(1) per item: committing item k never rewrites the k-1 before it.
    """
    import nyxnb
    from nyxnb.engine.durable import items, records
    from nyxnb.engine.outcomes import Attempt, ChainResult
    from nyxnb.providers.base import Completion

    with tempfile.TemporaryDirectory() as tmp:
        store = _fresh_store(Path(tmp))
        workflow_id = nyxnb.create_workflow(store, _spec(n), tenant="nyx", project="BRbase")
        step = records.load_steps(store, workflow_id)[0]
        items.sync_items(
            store, step, [(f"item {i}", f"Design item {i}", f"h{i}") for i in range(n)]
        )
        _checkpoint(store)
        before = _db_bytes(store)
        timings = []
        for i in range(n):
            answer = Completion(f"answer {i} " * 20, "end", 12, 40, "offline-1", "offline")
            result = ChainResult(
                answer, [Attempt("offline", "offline-1", 1, "ok", None, None, 12, 40)]
            )
            started = time.perf_counter()
            items.complete_item(store, step, i, answer.text, result)
            timings.append(time.perf_counter() - started)
        _checkpoint(store)
        grown = _db_bytes(store) - before
        store.dispose()
    tenth = max(n // 10, 1)
    first, last = statistics.median(timings[:tenth]), statistics.median(timings[-tenth:])
    return {
        "n": n,
        "first_10pct_median_us": first * 1e6,
        "last_10pct_median_us": last * 1e6,
        "growth_ratio": last / first,
        "store_bytes_per_item": grown / n,
    }


def _checkpoint(store: Any) -> None:
    raw = store.engine.raw_connection()  # outside a transaction: fold the WAL into the file
    raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()


def _db_bytes(store: Any) -> int:
    path = Path(store.url.database)
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def resume_after_kill(n: int = 1000, latency_ms: float = 5.0) -> dict[str, Any]:
    """Kill -9 a `nyxnb run` at 50% of an N-item fan-out; time the resume and count calls."""
    import nyxnb

    with tempfile.TemporaryDirectory() as tmp:
        store = _fresh_store(Path(tmp))
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps(_spec(n)))
        env = {
            **os.environ,
            "NYXNB_DB_URL": str(store.url),
            "NYXNB_OFFLINE_LATENCY_MS": str(latency_ms),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nyxnb",
                "run",
                str(spec),
                "--tenant",
                "nyx",
                "--project",
                "BRbase",
                "--json",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        workflow_id = ""
        for line in proc.stdout or []:
            event = json.loads(line)
            workflow_id = event["workflow_id"]
            if event["type"] == "fan_out_progress" and event["completed"] >= n // 2:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        started = time.perf_counter()
        result = nyxnb.resume(
            workflow_id, store=store, provider_options={"offline": {"latency_ms": latency_ms}}
        )
        elapsed = time.perf_counter() - started
        calls = sum(1 for e in result.events if e.type == "fan_out_progress")
        store.dispose()
    assert result.ok
    return {
        "n": n,
        "latency_ms": latency_ms,
        "resume_s": elapsed,
        "calls_on_resume": calls,
        "limit_s": -(-calls // 8) * latency_ms / 1000,
    }


def cached_rerun(latency_ms: float = 20.0) -> dict[str, Any]:
    """The 13-item sample workflow run twice: the re-run makes zero provider calls."""
    import nyxnb
    from nyxnb.store.seed import load_spec_path

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = _fresh_store(Path(tmp))
        for label in ("first", "rerun"):
            started = time.perf_counter()
            result = nyxnb.run(
                load_spec_path(),
                tenant="nyx",
                project="BRbase",
                store=store,
                provider="offline",
                provider_options={"offline": {"latency_ms": latency_ms}},
            )
            out[f"{label}_s"] = time.perf_counter() - started
            with store.engine.connect() as conn:
                out[f"{label}_calls"] = conn.exec_driver_sql(
                    "SELECT count(*) FROM llm_calls WHERE workflow_id = ? AND NOT cached",
                    (result.workflow_id,),
                ).scalar()
        store.dispose()
    return out


IMPORT_CODE = "import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"


def import_times(repeats: int) -> list[Measurement]:
    """`import nyxnb` vs `import langgraph.graph`, each in a fresh interpreter."""
    mods = ["nyxnb", "nyxnb.engine.api"]
    try:
        import langgraph  # noqa: F401

        mods.append("langgraph.graph")
    except ImportError:
        pass
    return [
        Measurement(
            f"import {m}",
            [python_seconds(IMPORT_CODE.format(mod=m)) for _ in range(repeats)],
            {"module": m},
        )
        for m in mods
    ]


# VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss across fork+exec.
MEMORY_CODE = """
import re, sys, tempfile, pathlib
sys.path.insert(0, {root!r})
from bench.fanout import {fn}
with tempfile.TemporaryDirectory() as tmp:
    {fn}({n}, 0.0, pathlib.Path(tmp))
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024)
"""


def peak_memory(n: int = 10_000) -> dict[str, float]:
    """Peak RSS (MiB) of a process running an N-item fan-out, per system."""
    out = {}
    for fn in ("run_nyxnb", "run_langgraph", "run_floor"):
        if fn == "run_langgraph":
            try:
                import langgraph  # noqa: F401
            except ImportError:
                continue
        out[fn.removeprefix("run_")] = python_seconds(
            MEMORY_CODE.format(root=str(ROOT), fn=fn, n=n)
        )
    return out
