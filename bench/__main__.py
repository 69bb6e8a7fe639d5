"""`python -m bench [--quick] [--only fanout,growth,...,bare429,streaming,datasets]`.

Prints a table of medians (min-max) with ratios against the physical limit and the peers, and
writes everything to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import Measurement, machine

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(m: Measurement) -> str:
    return f"{m.median:.4f}s ({min(m.runs):.4f}-{max(m.runs):.4f})"


def report_fanout(cells: list[Measurement]) -> list[str]:
    lines = [
        "",
        "## Fan-out (C=8, durable per-item commits; median of runs, min-max)",
        "",
        "| N | L ms | system | wall | vs limit | vs floor | per item |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {(m.params["n"], m.params["latency_ms"], m.params["system"]): m for m in cells}
    for (n, lat, system), m in by_key.items():
        floor = by_key[(n, lat, "asyncio+sqlite3")].median
        limit = m.params["limit_s"]
        vs_limit = f"{m.median / limit:.3f}x" if limit else "-"
        per_item = f"{m.median / n * 1e6:.0f} us"
        lines.append(
            f"| {n} | {lat:g} | {system} | {_fmt(m)} | {vs_limit} | "
            f"{m.median / floor:.2f}x | {per_item} |"
        )
    for n in sorted({k[0] for k in by_key}):
        ours, peer = by_key.get((n, 0.0, "nyxnb")), by_key.get((n, 0.0, "langgraph"))
        if ours and peer:
            lines.append(
                f"\nN={n}, L=0: nyxnb per-item overhead {ours.median / n * 1e6:.0f} us vs "
                f"LangGraph {peer.median / n * 1e6:.0f} us "
                f"(LangGraph/nyxnb = {peer.median / ours.median:.2f}x)"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Smaller sizes, 3 repeats.")
    parser.add_argument(
        "--only",
        default="fanout,growth,resume,cache,import,memory,migrate,ratelimit,bare429,streaming,"
        "datasets",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    repeats = 3 if args.quick else args.repeats
    out: dict[str, Any] = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "repeats": repeats,
    }
    lines = [
        f"# nyxnb benchmarks ({out['when']}, {out['machine']['platform']}, "
        f"{out['machine']['cpus']} CPUs)"
    ]
    if "fanout" in only:
        from bench.fanout import bench_fanout

        sizes = (13, 100) if args.quick else (13, 100, 1000)
        cells = bench_fanout(sizes, (0.0, 20.0), repeats)
        out["fanout"] = [m.to_dict() for m in cells]
        lines += report_fanout(cells)
    lines += _extras(only, args.quick, repeats, out)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(out, indent=2, default=str))
    print("\n".join(lines))
    print(f"\nwrote {RESULTS / 'latest.json'}")


def _extras(only: set[str], quick: bool, repeats: int, out: dict[str, Any]) -> list[str]:
    from bench import engine

    lines: list[str] = []
    if "growth" in only:
        out["growth"] = g = engine.commit_growth(2000 if quick else 10_000)
        lines += [
            "",
            "## Persistence growth",
            "",
            f"item commit, first 10%: {g['first_10pct_median_us']:.0f} us, last 10%: "
            f"{g['last_10pct_median_us']:.0f} us -> ratio {g['growth_ratio']:.2f} "
            f"(N={g['n']}; flat = O(1)); store size {g['store_bytes_per_item']:.0f} B/item",
        ]
    if "resume" in only:
        out["resume"] = r = engine.resume_after_kill(200 if quick else 1000)
        lines += [
            "",
            "## Resume after kill -9 at 50%",
            "",
            f"N={r['n']}: resume {r['resume_s']:.2f}s, {r['calls_on_resume']} provider "
            f"calls (the uncommitted half; limit {r['limit_s']:.2f}s at "
            f"{r['latency_ms']:g} ms)",
        ]
    if "cache" in only:
        out["cache"] = c = engine.cached_rerun()
        lines += [
            "",
            "## Cached re-run of the 13-item sample workflow",
            "",
            f"first run {c['first_s']:.2f}s with {c['first_calls']} calls; re-run "
            f"{c['rerun_s']:.2f}s with {c['rerun_calls']} calls",
        ]
    if "import" in only:
        cells = engine.import_times(repeats)
        out["import"] = [m.to_dict() for m in cells]
        lines += ["", "## Import time (fresh interpreter)", ""]
        lines += [f"{m.name}: {_fmt(m)}" for m in cells]
    if "memory" in only:
        out["memory_mib"] = mem = engine.peak_memory(2000 if quick else 10_000)
        lines += [
            "",
            "## Peak RSS of a fan-out process (MiB)",
            "",
            ", ".join(f"{k}: {v:.0f}" for k, v in mem.items()),
        ]
    if "migrate" in only:
        lines += _migrate(quick, out)
    if "ratelimit" in only:
        from bench.ratelimit import bench_ratelimit, report

        grouped = bench_ratelimit(1 if quick else 3)
        out["ratelimit"] = [[vars(c) for c in cells] for cells in grouped]
        lines += report(grouped)
    if "bare429" in only:
        from bench.ratelimit import bench_bare, report_bare

        out["bare429"] = bare = bench_bare(1 if quick else 3)
        lines += report_bare(bare)
    if "streaming" in only:
        lines += _streaming(quick, out)
    if "datasets" in only:  # 100,000 rows, interleaved with the same items typed, median of 3
        from bench import datasets

        out["datasets"] = result = datasets.run(10_000 if quick else 100_000, 1 if quick else 3)
        lines += ["", *datasets.report(result)]
    return lines


def _streaming(quick: bool, out: dict[str, Any]) -> list[str]:
    """The streamed path against the bare SDK; a 40 s answer; a hung provider."""
    from bench.streaming import bench_slow_and_hung, bench_stream, report

    out["streaming"] = rows = bench_stream(2 if quick else 5, 100 if quick else 200)
    out["slow_and_hung"] = slow_hung = None if quick else bench_slow_and_hung()
    return report(rows, slow_hung)


def _migrate(quick: bool, out: dict[str, Any]) -> list[str]:
    """Run bench/bench_migrate.py (SQLite, and PostgreSQL when NYXNB_TEST_PG_URL is set)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent / "bench_migrate.py"
    args = [sys.executable, str(script), *(["--quick"] if quick else [])]
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    out["migrate_text"] = text
    return ["", "## Migration (plan + apply + reverse) and clone", "", "```", text, "```"]


if __name__ == "__main__":
    main()
