"""A rate-limited fan-out: nyxnb (nothing configured), a naive loop and the cookbook processor.

The loopback fake enforces OpenAI-style limits (``x-ratelimit-*`` headers, ``rate_limit_exceeded``
429s) of RPM requests and TPM tokens per minute, answering in 100-500 ms.  Three clients fan
out N requests at concurrency 8, 32 and 128 in the same run:

- ``nyxnb``: a fan-out step, no limits configured (it learns them from the headers);
- ``naive``: ``asyncio.Semaphore(C)`` around ``AsyncOpenAI().chat.completions.create`` with the
  SDK's default retries (2, with backoff honouring the headers): what people write first;
- ``cookbook``: a reimplementation of the OpenAI cookbook's ``api_request_parallel_processor.py``,
  given the true budget: request and token capacity refilled continuously up to a minute's worth,
  a token estimate of prompt + max_tokens per request, a pause after any rate-limit error (the
  cookbook's 15 s, scaled by the same factor as the limit), up to 5 attempts; its in-flight
  count is capped at C too.

The limit is scaled up from the issue's 600 rpm (and N down) so the whole run takes a minute or
two; the ratio that matters, wall / (N / rate), does not depend on the scale.  ``pace`` is
N / rate, the time the limit itself needs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RPM = 1200  # 2x the 600 rpm (at C=8 and 300 ms a call, 8 in flight pass ~1600 rpm)
SCALE = RPM / 600
OUT_TOKENS = 200
TPM = int(RPM * (OUT_TOKENS + 12) * 1.1)  # tokens bind nearly as tightly as requests
LATENCY_MS = (100.0, 500.0)
N = 100
CONCURRENCY = (8, 32, 128)
MODEL = "gpt-4o-mini"


@dataclass
class Cell:
    """One run of one system at one concurrency."""

    system: str
    concurrency: int
    wall_s: float
    pace_s: float
    calls: int
    throttled: int
    failed: int

    @property
    def ratio(self) -> float:
        return self.wall_s / self.pace_s

    @property
    def share_429(self) -> float:
        return self.throttled / max(self.calls, 1)


def _pace_s(n: int) -> float:
    per_request = OUT_TOKENS + 12
    per_min = min(RPM, TPM / per_request)
    return n / per_min * 60


def _prompt(i: int) -> str:
    return f"Design feature {i} of the rate limited benchmark"


async def _naive(n: int, c: int) -> int:
    import openai

    client = openai.AsyncOpenAI()
    gate = asyncio.Semaphore(c)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": _prompt(i)}]
                )
            except openai.APIError:
                failed += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    return failed


class _Cookbook:
    """The cookbook's capacity accounting, as in ``api_request_parallel_processor.py``."""

    def __init__(self, rpm: float, tpm: float, c: int) -> None:
        self.rpm, self.tpm, self.c = rpm, tpm, c
        self.requests, self.tokens = rpm, tpm  # capacity starts full (a minute's worth)
        self.updated = time.monotonic()
        self.last_rate_error = 0.0
        self.in_flight = 0
        self.pause_s = 15 / SCALE

    def refill(self) -> None:
        now = time.monotonic()
        elapsed, self.updated = now - self.updated, now
        self.requests = min(self.requests + self.rpm * elapsed / 60, self.rpm)
        self.tokens = min(self.tokens + self.tpm * elapsed / 60, self.tpm)

    async def run(self, n: int) -> int:
        import openai

        client = openai.AsyncOpenAI(max_retries=0)
        queue: list[tuple[int, int]] = [(i, 5) for i in range(n)]  # (item, attempts left)
        tasks: set[asyncio.Task[None]] = set()
        failed = 0

        async def call(i: int, left: int) -> None:
            nonlocal failed
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": _prompt(i)}]
                )
            except openai.RateLimitError:
                self.last_rate_error = time.monotonic()
                queue.append((i, left - 1)) if left > 1 else None
                failed += left <= 1
            except openai.APIError:
                queue.append((i, left - 1)) if left > 1 else None
                failed += left <= 1
            finally:
                self.in_flight -= 1

        while queue or tasks:
            self.refill()
            cost = len(_prompt(0)) // 4 + 16 + OUT_TOKENS  # prompt + max_tokens, as it counts
            paused = time.monotonic() - self.last_rate_error < self.pause_s
            ready = self.requests >= 1 and self.tokens >= cost and self.in_flight < self.c
            if queue and ready and not paused:
                self.requests, self.tokens = self.requests - 1, self.tokens - cost
                self.in_flight += 1
                task = asyncio.create_task(call(*queue.pop(0)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                continue
            await asyncio.sleep(0.001)
        await client.close()
        return failed


def _nyxnb(n: int, c: int, folder: Path, provider: str = "openai") -> tuple[int, float]:
    import nyxnb
    from nyxnb.store import open_store
    from nyxnb.store.models import StepItem
    from nyxnb.store.seed import seed

    store = open_store(f"sqlite:///{folder / f'rl-{time.perf_counter_ns()}.db'}")
    seed(store)
    spec = {
        "name": "ratelimited",
        "defaults": {"provider": provider, "fallback": [], "cache": False, "concurrency": c},
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "items": [{"heading": str(i)} for i in range(n)],
                "prompt": "Design feature {{ item.heading }} of the rate limited benchmark",
            }
        ],
    }
    started = time.perf_counter()  # the store's creation and seeding are not the run
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=store)
    wall = time.perf_counter() - started
    with store.session() as s:
        done = s.query(StepItem).filter(StepItem.status == "completed").count()
    store.dispose()
    return (0 if result.ok else n - done), wall


def _cell(srv: Any, system: str, c: int, n: int, folder: Path) -> Cell:
    from nyxnb.testing import Reply

    srv.reset()
    srv.set_default("openai", Reply(output_tokens=OUT_TOKENS))
    srv.set_latency("openai", LATENCY_MS)
    srv.limit("openai", rpm=RPM, tpm=TPM)
    started = time.perf_counter()
    if system == "nyxnb":
        failed, wall = _nyxnb(n, c, folder)
    else:
        run = _naive(n, c) if system == "naive" else _Cookbook(RPM, TPM, c).run(n)
        failed = asyncio.run(run)
        wall = time.perf_counter() - started
    calls = srv.hits["openai"] + srv.throttled["openai"]
    return Cell(system, c, wall, _pace_s(n), calls, srv.throttled["openai"], failed)


def bench_ratelimit(repeats: int = 3, n: int = N) -> list[list[Cell]]:
    """Every system at every concurrency, ``repeats`` times; cells grouped per (system, C)."""
    from nyxnb.testing import FakeProviderServer

    grouped: list[list[Cell]] = []
    with tempfile.TemporaryDirectory() as tmp, FakeProviderServer() as srv:
        saved = {k: os.environ.get(k) for k in srv.env()}
        os.environ.update(srv.env())
        try:
            for c in CONCURRENCY:
                for system in ("nyxnb", "naive", "cookbook"):
                    grouped.append([_cell(srv, system, c, n, Path(tmp)) for _ in range(repeats)])
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return grouped


BARE_RPM, BARE_N = 120, 60  # a provider that says nothing: 2 requests a second, 60 items


def bench_bare(repeats: int = 3, n: int = BARE_N) -> list[dict[str, Any]]:
    """nyxnb against a provider answering bare 429s (no headers, no hint), per provider."""
    from nyxnb.testing import FakeProviderServer, Reply

    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeProviderServer() as srv:
        saved = {k: os.environ.get(k) for k in srv.env()}
        os.environ.update(srv.env())
        try:
            for provider in ("openai", "anthropic", "google"):
                for _ in range(repeats):
                    srv.reset()
                    srv.set_default(provider, Reply(output_tokens=OUT_TOKENS))
                    srv.set_latency(provider, LATENCY_MS)
                    srv.limit(provider, rpm=BARE_RPM, hints=False)
                    failed, wall = _nyxnb(n, 32, Path(tmp), provider)
                    arrivals = sorted(t for p, t in srv.arrivals if p == provider)
                    rows.append(
                        {"provider": provider, "n": n, "wall_s": wall, "failed": failed,
                         "requests": len(arrivals), "throttled": srv.throttled[provider],
                         "peak_per_s": _peak_per_s(arrivals), "pace_s": n / BARE_RPM * 60}
                    )  # fmt: skip
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return rows


def _peak_per_s(arrivals: list[float]) -> int:
    """The most requests that arrived within any one second."""
    peak, start = 0, 0
    for end, t in enumerate(arrivals):
        while t - arrivals[start] >= 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def report_bare(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: requests per item and the peak request rate against bare 429s."""
    lines = [
        "",
        f"## Bare 429s (limit {BARE_RPM} rpm, no headers, no retry hint; N={BARE_N}, C=32; "
        "median of runs)",
        "",
        "| provider | wall / pace | requests / items | peak requests in 1 s | items failed |",
        "|---|---|---|---|---|",
    ]
    for provider in dict.fromkeys(r["provider"] for r in rows):
        mine = [r for r in rows if r["provider"] == provider]
        ratio = statistics.median(r["wall_s"] / r["pace_s"] for r in mine)
        per_item = statistics.median(r["requests"] / r["n"] for r in mine)
        peak = statistics.median(r["peak_per_s"] for r in mine)
        failed = statistics.median(r["failed"] for r in mine)
        lines.append(f"| {provider} | {ratio:.2f}x | {per_item:.2f}x | {peak:g} | {failed:g} |")
    return lines


def report(grouped: list[list[Cell]]) -> list[str]:
    """Markdown lines: medians of wall / pace, share of 429s and failed items."""
    first = grouped[0][0]
    lines = [
        "",
        f"## Rate-limited fan-out (limit {RPM} rpm + {TPM} tpm, latency "
        f"{LATENCY_MS[0]:g}-{LATENCY_MS[1]:g} ms, N={N}, pace N/rate = {first.pace_s:.2f}s; "
        "median of runs)",
        "",
        "| C | system | wall | wall / pace | 429s of calls | items failed |",
        "|---|---|---|---|---|---|",
    ]
    for cells in grouped:
        m = cells[0]
        wall = statistics.median(x.wall_s for x in cells)
        ratio = statistics.median(x.ratio for x in cells)
        share = statistics.median(x.share_429 for x in cells)
        failed = statistics.median(x.failed for x in cells)
        lines.append(
            f"| {m.concurrency} | {m.system} | {wall:.2f}s | {ratio:.3f}x | "
            f"{share * 100:.1f}% | {failed:g} |"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(report(bench_ratelimit(1)) + report_bare(bench_bare(1))))
