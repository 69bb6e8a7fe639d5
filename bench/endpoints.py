"""What a named endpoint and per-step call settings cost: a fan-out through each, side by side.

The same 200-item fan-out (C = 8, cache off, SQLite) runs three ways against two loopback fakes
answering in 20 ms: the built-in ``openai`` (``OPENAI_BASE_URL``), a named endpoint ``local``
(``{api: openai, base_url, key_env}``) on the other fake, and ``local`` with reasoning, a service
tier and sampling set on the step. The physical limit is N / C x 20 ms = 0.5 s. Also the CPU per
request of the parameter mapping of each API (``nyxnb.providers.params``).

    .venv/bin/python -m bench.endpoints [--items 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import nyxnb
from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.params import anthropic_params, google_config, openai_params
from nyxnb.store.seed import seed
from nyxnb.testing import FakeProviderServer

LATENCY_MS = 20.0
CONCURRENCY = 8
SETTINGS = {"reasoning": "low", "service_tier": "flex", "temperature": 0.2, "top_p": 0.9,
            "stop": ["END"], "seed": 7}  # fmt: skip


def _spec(n: int, provider: str, endpoint_url: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"endpoints-{provider}",
        "defaults": {"provider": provider, "fallback": [], "cache": False,
                     "concurrency": CONCURRENCY},
        "endpoints": {"local": {"api": "openai", "base_url": f"{endpoint_url}/v1",
                                "key_env": "LOCAL_BENCH_KEY"}},
        "steps": [{"name": "features", "type": "fan-out", "persona": "Cael",
                   "items": [{"heading": f"Feature {i}"} for i in range(n)],
                   "prompt": "Design {{ item.heading }}", **settings}],
    }  # fmt: skip


def _walls(n: int, repeats: int) -> dict[str, list[float]]:
    ways = {
        "built-in openai": ("openai:gpt-4o-mini", {}),
        "named endpoint": ("local:llama3.1:8b", {}),
        "named endpoint + settings": ("local:llama3.1:8b", SETTINGS),
    }
    walls: dict[str, list[float]] = {name: [] for name in ways}
    with FakeProviderServer() as builtin, FakeProviderServer() as local:
        for srv in (builtin, local):
            srv.set_latency("openai", LATENCY_MS)
        os.environ.update(builtin.env() | {"LOCAL_BENCH_KEY": "bench-key"})
        with tempfile.TemporaryDirectory() as tmp:
            store = nyxnb.open_store(f"sqlite:///{Path(tmp) / 'bench.db'}")
            seed(store)
            for _ in range(repeats + 1):  # the first round warms up
                for name, (provider, settings) in ways.items():
                    spec = _spec(n, provider, local.url, settings)
                    started = time.perf_counter()
                    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=store)
                    walls[name].append(time.perf_counter() - started)
                    assert result.ok, result.error
            store.dispose()
    return {name: runs[1:] for name, runs in walls.items()}


def _mapping_us() -> dict[str, float]:
    request = CompletionRequest.of("sys", "hi", reasoning_effort="low", service_tier="flex",
                                   temperature=0.2, top_p=0.9, stop=("END",), seed=7)  # fmt: skip
    base = {"model": "m", "max_tokens": 2048, "messages": []}
    calls = {
        "openai_params": lambda: openai_params(request),
        "anthropic_params": lambda: anthropic_params(request, base),
        "google_config": lambda: google_config(request),
    }
    return {name: min(timeit.repeat(fn, number=2000, repeat=5)) / 2000 * 1e6
            for name, fn in calls.items()}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.endpoints", description=__doc__)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    walls = _walls(args.items, args.repeats)
    limit = args.items / CONCURRENCY * LATENCY_MS / 1000
    base = statistics.median(walls["built-in openai"])
    print(f"N={args.items}, C={CONCURRENCY}, L={LATENCY_MS:g} ms; limit {limit:.2f}s; "
          f"median of {args.repeats} (min-max)\n")  # fmt: skip
    print("| way | wall | vs limit | vs built-in |\n|---|---|---|---|")
    for name, runs in walls.items():
        med = statistics.median(runs)
        print(f"| {name} | {med:.3f}s ({min(runs):.3f}-{max(runs):.3f}) | {med / limit:.2f}x | "
              f"{med / base:.3f}x |")  # fmt: skip
    print("\n| mapping | CPU per request |\n|---|---|")
    for name, us in _mapping_us().items():
        print(f"| {name} | {us:.1f} us |")


if __name__ == "__main__":
    main()
