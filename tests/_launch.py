"""Starting ``nyxnb`` processes from tests: runs, resumes and workers on one store.

One place for the command line, the environment (store URL, offline latency, a shorter claim
TTL) and the waits, shared by the worker, kill -9 and rate-budget tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

from nyxnb.store import Store


def nyxnb_proc(
    url: str,
    *args: str,
    latency_ms: int | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m nyxnb ARGS`` on the store at ``url``, with text pipes."""
    full = {**os.environ, **(env or {}), "NYXNB_DB_URL": url}
    if latency_ms is not None:
        full["NYXNB_OFFLINE_LATENCY_MS"] = str(latency_ms)
    cmd = [sys.executable, "-m", "nyxnb", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full
    )


def worker_proc(
    url: str,
    latency_ms: int | None,
    *extra: str,
    concurrency: int = 4,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``nyxnb --json worker --concurrency N EXTRA`` on the store at ``url``."""
    args = ("--json", "worker", "--concurrency", str(concurrency), *extra)
    return nyxnb_proc(url, *args, latency_ms=latency_ms, env=env)


def wait_for_workers(store: Store, count: int, timeout: float = 60) -> None:
    """Return once ``count`` workers are registered and heartbeating."""
    from nyxnb.engine.workers.worker import live_workers

    deadline = time.monotonic() + timeout
    while len(live_workers(store)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(live_workers(store))} of {count} workers started")
        time.sleep(0.05)


def stop_all(
    procs: Iterable[subprocess.Popen[str]], sig: int = signal.SIGINT, timeout: float = 60
) -> list[tuple[str, str]]:
    """Signal every live process (Ctrl-C drains a worker), then collect (stdout, stderr)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    return [p.communicate(timeout=timeout) for p in procs]
