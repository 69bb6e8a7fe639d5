"""Streamed calls: nyxnb's path against a bare streamed-SDK floor; a slow answer; a hung provider.

- ``stream``: N calls at concurrency C to the loopback fake, each a streamed answer of WORDS
  words (one SSE event per 4 words), through ``Provider.complete`` (timeouts, accumulation,
  usage, rate headers) and through the bare SDK (``stream=True``, text joined, nothing else),
  alternating in the same run; with no pacing (L = 0: the overhead at its worst) and with
  CHUNK_MS between chunks (an answer as fast as a fast model writes).  The fake serves from a
  child process, so the CPU time of this process is the client's alone: on a shared machine
  that ratio holds still where walls move by tens of percent.
- ``slow``: one healthy answer that takes SLOW_S seconds to stream, default timeouts (30 s first
  byte, 60 s idle): one request, kept.
- ``hung``: five items whose first provider never answers, default timeouts: the fallback's
  answers come after one first-byte timeout, not five.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

N, C, WORDS, CHUNK_MS = 200, 8, 400, 5.0
SLOW_S = 40.0
PROVIDERS = ("anthropic", "openai", "google")
TEXT = " ".join(f"w{i}" for i in range(WORDS))


@contextmanager
def _fake() -> Iterator[Any]:
    from nyxnb.testing import FakeProviderServer

    with FakeProviderServer() as srv, mock.patch.dict(os.environ, srv.env()):
        yield srv


@contextmanager
def _fake_process(chunk_ms: float) -> Iterator[None]:
    """The fake in a child process answering every provider with TEXT; its env set here."""
    code = f"from bench.streaming import _serve; _serve({chunk_ms!r})"
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        with mock.patch.dict(os.environ, json.loads(child.stdout.readline())):
            yield
    finally:
        child.stdin.close()
        child.wait(30)


def _serve(chunk_ms: float) -> None:
    """The child: serve TEXT, print the env, stop when the parent closes stdin."""
    from nyxnb.testing import FakeProviderServer, Reply

    with FakeProviderServer() as srv:
        for provider in PROVIDERS:
            srv.set_default(provider, Reply(TEXT, chunk_delay_ms=chunk_ms))
        print(json.dumps(srv.env()), flush=True)
        sys.stdin.read()


async def _bare(provider: str, n: int) -> None:
    """The floor: the SDK's own stream, text joined, nothing else."""
    import anthropic
    import openai
    from google import genai

    messages = [{"role": "user", "content": "hello"}]
    if provider == "anthropic":
        client: Any = anthropic.AsyncAnthropic(max_retries=0)

        async def one() -> str:
            stream = await client.messages.create(
                model="claude-haiku-4-5", max_tokens=2048, messages=messages, stream=True
            )
            return "".join([e.delta.text async for e in stream if e.type == "content_block_delta"])
    elif provider == "openai":
        client = openai.AsyncOpenAI(max_retries=0)

        async def one() -> str:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    else:
        client = genai.Client(api_key=os.environ["GEMINI_API_KEY"])

        async def one() -> str:
            stream = await client.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="hello"
            )
            return "".join([c.text or "" async for c in stream])

    await _fan(one, n)
    await (client.aio.aclose() if provider == "google" else client.close())


async def _ours(provider: str, n: int) -> None:
    from nyxnb.providers.base import CompletionRequest
    from nyxnb.providers.registry import create_provider

    prov = create_provider(provider)
    request = CompletionRequest.of("", "hello")

    async def one() -> str:
        return (await prov.complete(request)).text

    await _fan(one, n)
    await prov.aclose()


async def _fan(one: Callable[[], Any], n: int) -> None:
    gate = asyncio.Semaphore(C)

    async def gated() -> None:
        async with gate:
            text = await one()
            assert text.split() == TEXT.split(), text[:80]

    await asyncio.gather(*(gated() for _ in range(n)))


def bench_stream(repeats: int = 5, n: int = N) -> list[dict[str, Any]]:
    """Median wall and client CPU of ``n`` streamed calls, nyxnb's path and the bare SDK, per
    provider and L."""
    rows = []
    for chunk_ms in (0.0, CHUNK_MS):
        with _fake_process(chunk_ms):
            rows += [_one_case(provider, chunk_ms, repeats, n) for provider in PROVIDERS]
    return rows


def _one_case(provider: str, chunk_ms: float, repeats: int, n: int) -> dict[str, Any]:
    walls: dict[str, list[float]] = {"nyxnb": [], "bare SDK": []}
    cpus: dict[str, list[float]] = {"nyxnb": [], "bare SDK": []}
    for i in range(repeats + 1):  # the first round warms up
        for system, run in (("nyxnb", _ours), ("bare SDK", _bare)):
            started, cpu = time.perf_counter(), time.process_time()
            asyncio.run(run(provider, n))
            if i:
                walls[system].append(time.perf_counter() - started)
                cpus[system].append(time.process_time() - cpu)
    ours, floor = statistics.median(walls["nyxnb"]), statistics.median(walls["bare SDK"])
    ours_cpu, floor_cpu = statistics.median(cpus["nyxnb"]), statistics.median(cpus["bare SDK"])
    return {"provider": provider, "chunk_ms": chunk_ms, "nyxnb_s": ours, "floor_s": floor,
            "ratio": ours / floor, "nyxnb_cpu_s": ours_cpu, "floor_cpu_s": floor_cpu,
            "cpu_ratio": ours_cpu / floor_cpu, "runs": walls, "cpu_runs": cpus}  # fmt: skip


def _run(spec: dict[str, Any], folder: Path) -> tuple[Any, float, Any]:
    import nyxnb
    from nyxnb.store import open_store
    from nyxnb.store.seed import seed

    store = open_store(f"sqlite:///{folder / f'st-{time.perf_counter_ns()}.db'}")
    seed(store)
    started = time.perf_counter()
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=store)
    return result, time.perf_counter() - started, store


def _spec(n: int, chain: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": "streams",
        "defaults": {"provider": chain[0], "fallback": list(chain[1:]), "cache": False},
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "items": [{"heading": str(i)} for i in range(n)],
                "prompt": "Design feature {{ item.heading }}",
            }
        ],
    }


def bench_slow_and_hung() -> dict[str, Any]:
    """A SLOW_S-second healthy answer (one request, kept) and a hung provider (one timeout)."""
    from nyxnb.testing import Reply, hang

    words = 400
    slow = Reply(" ".join(f"w{i}" for i in range(words)), chunk_delay_ms=SLOW_S * 1000 / 100)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, _fake() as srv:
        srv.set_default("anthropic", slow)
        result, wall, _ = _run(_spec(1, ("anthropic", "openai")), Path(tmp))
        out["slow"] = {
            "wall_s": wall,
            "requests": srv.hits["anthropic"],
            "kept": result.ok and srv.hits["openai"] == 0,
        }
        srv.reset()
        srv.set_default("anthropic", hang(600))
        result, wall, _ = _run(_spec(5, ("anthropic", "openai")), Path(tmp))
        out["hung"] = {
            "wall_s": wall,
            "requests": srv.hits["anthropic"],
            "fallback_answers": srv.hits["openai"],
            "ok": result.ok,
        }
    return out


def report(rows: list[dict[str, Any]], slow_hung: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the streamed-path table and the slow/hung cases."""
    lines = [
        "",
        f"## Streamed calls (N={N}, C={C}, {WORDS} words in {WORDS // 4} chunks; median of runs)",
        "",
        "| provider | between chunks | nyxnb | bare SDK | nyxnb / bare | client CPU nyxnb / bare |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['provider']} | {r['chunk_ms']:g} ms | {r['nyxnb_s']:.3f}s | "
            f"{r['floor_s']:.3f}s | {r['ratio']:.3f}x | {r['nyxnb_cpu_s']:.3f}s / "
            f"{r['floor_cpu_s']:.3f}s = {r['cpu_ratio']:.3f}x |"
        )
    if slow_hung:
        s, h = slow_hung["slow"], slow_hung["hung"]
        lines += [
            "",
            f"Slow healthy answer: {s['wall_s']:.1f}s, {s['requests']} request(s), "
            f"kept: {s['kept']}.",
            f"Hung provider, 5 items: fallback answers after {h['wall_s']:.1f}s, "
            f"{h['requests']} request(s) to the hung one, {h['fallback_answers']} to the fallback.",
        ]
    return lines


if __name__ == "__main__":
    print("\n".join(report(bench_stream(3), bench_slow_and_hung())))
