"""Typed fan-out items (inline ``items:``) at growing N: per-item cost should stay flat.

``python -m bench.scaling_typed 1000 4000 16000`` runs one offline fan-out (L = 0, C = 8) per N
on a fresh SQLite store, each item with an 80-character body, and prints seconds and us/item.
Before revision 0014 the cost per item grew with N (the tenancy triggers read each parent's
tenant from rows that hold every inline item): see bench/README.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.fanout import _fresh_store, _spec


def run_typed(n: int, folder: Path) -> float:
    """Seconds for an ``n``-item typed fan-out, events streamed as ``nyxnb run`` does."""
    import nyxnb

    store = _fresh_store(folder)
    spec = _spec(n)
    for item in spec["steps"][0]["items"]:
        item["body"] = "x" * 80
    started = time.perf_counter()
    for _ in nyxnb.run_iter(spec, tenant="nyx", project="BRbase", store=store):
        pass
    elapsed = time.perf_counter() - started
    store.dispose()
    return elapsed


def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            elapsed = run_typed(n, Path(tmp))
            print(f"N = {n:>7,}: {elapsed:7.2f} s, {elapsed / n * 1e6:6.0f} us/item", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1_000, 4_000, 16_000])
