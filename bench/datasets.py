"""Data in, data out at scale: a 100,000-row CSV fan-out with a schema, offline (issue 23).

    .venv/bin/python -m bench.datasets [--rows 100000] [--repeats 3]

Measures, each run in a fresh interpreter on a fresh SQLite store:

- ``dataset``: the fan-out reading its rows from a CSV (``items_from: {path, key}``) with an
  ``output_schema``: wall seconds (workflow creation, i.e. materialising the rows, included) and
  the process's peak RSS;
- ``typed``: the same fan-out with the same rows typed into the spec as ``items:``, same prompt
  text and schema: the per-item overhead the dataset is compared with;
- ``export``: ``export_table`` of the dataset run to CSV and to Parquet;
- ``rerun``: a revision after editing 1% of the rows: the number of provider calls it makes.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "enum": ["ml", "systems", "theory", "hci"]},
        "relevance": {"type": "integer", "minimum": 1, "maximum": 5},
        "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["topic", "relevance", "keywords"],
}
PROMPT = "Classify the paper {{ item.title }} ({{ item.year }}): {{ item.abstract }}"
TYPED_PROMPT = "Classify the paper {{ item.heading }}: {{ item.body }}"


def write_dataset(path: Path, rows: int, edit_every: int = 0) -> None:
    """``rows`` short abstracts; every ``edit_every``-th row edited (0: none)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "year", "abstract"])
        for i in range(rows):
            abstract = f"We study problem {i % 997} with method {i % 89} and report results."
            if edit_every and i % edit_every == 0:
                abstract += " (revised)"
            writer.writerow([f"p{i:07d}", f"Paper {i}", 1990 + i % 35, abstract])


def _spec(items_from: Any = None, items: Any = None) -> dict[str, Any]:
    step: dict[str, Any] = {"name": "extract", "type": "fan-out", "output_schema": SCHEMA}
    if items is not None:
        step |= {"items": items, "prompt": TYPED_PROMPT}
    else:
        step |= {"items_from": items_from, "prompt": PROMPT}
    return {
        "name": "bench-dataset",
        "defaults": {"provider": "offline", "fallback": [], "cache": False, "concurrency": 8},
        "steps": [step],
    }


_CHILD = r"""
import json, resource, sys, time
import nyxnb
from nyxnb.store.seed import seed
args = json.loads(sys.argv[1])
store = nyxnb.open_store(args["db"])
seed(store)
spec = json.loads(open(args["spec"]).read())
from nyxnb import events as ev
def run(events):  # like `nyxnb run`: events stream past, none are kept (nyxnb.run keeps them all)
    last = None
    for last in events:
        pass
    assert isinstance(last, ev.WorkflowCompleted), last
    return last.workflow_id
t0 = time.perf_counter()
workflow_id = run(nyxnb.run_iter(spec, tenant="nyx", project="BRbase", store=store))
wall = time.perf_counter() - t0
out = {"wall": wall, "workflow_id": workflow_id}
if args.get("export"):
    from nyxnb.reports.table import export_table
    for suffix in ("csv", "parquet"):
        t0 = time.perf_counter()
        rows = export_table(store, workflow_id, args["export"] + "." + suffix)
        out["export_" + suffix] = time.perf_counter() - t0
        assert rows == args["rows"], rows
if args.get("rerun"):
    from sqlalchemy import func, select
    from nyxnb.store.models import LlmCall
    t0 = time.perf_counter()
    from nyxnb.engine.iterate.revisions import rerun_job
    from nyxnb.engine.api import job_events_sync
    second = run(job_events_sync(rerun_job(
        workflow_id, json.loads(open(args["rerun"]).read()), store=store)))
    out["rerun_wall"] = time.perf_counter() - t0
    query = select(func.count()).where(LlmCall.workflow_id == second, LlmCall.outcome == "ok")
    with store.reading() as conn:
        out["rerun_calls"] = int(conn.scalar(query))
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _child(folder: Path, name: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec_path = folder / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    db = folder / f"{name}-{len(list(folder.iterdir()))}.db"
    args = {"db": f"sqlite:///{db}", "spec": str(spec_path), **extra}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(rows: int, repeats: int) -> dict[str, Any]:
    """Every measurement, ``repeats`` times each (medians and all runs)."""
    folder = Path(tempfile.mkdtemp(prefix="nyxnb-bench-data-"))
    data, edited = folder / "papers.csv", folder / "papers-edited.csv"
    write_dataset(data, rows)
    write_dataset(edited, rows, edit_every=100)
    with data.open() as f:
        typed = [
            {"heading": f"{r['title']} ({r['year']})", "body": r["abstract"]}
            for r in csv.DictReader(f)
        ]
    dataset_spec = _spec({"path": str(data), "key": "id"})
    rerun_spec = folder / "rerun.json"
    rerun_spec.write_text(json.dumps(_spec({"path": str(edited), "key": "id"})))
    runs: dict[str, list[dict[str, Any]]] = {"dataset": [], "typed": []}
    for i in range(repeats):  # interleaved, so both see the same machine
        extra = {"export": str(folder / f"out{i}"), "rows": rows, "rerun": str(rerun_spec)}
        runs["dataset"].append(_child(folder, "dataset", dataset_spec, **extra))
        runs["typed"].append(_child(folder, "typed", _spec(items=typed)))
    return {"rows": rows, "repeats": repeats, "runs": runs, "summary": summarise(rows, runs)}


def summarise(rows: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians and the ratios the targets name."""

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    per_item = {k: med(k, "wall") / rows * 1e6 for k in runs}
    return {
        "dataset_wall_s": med("dataset", "wall"),
        "typed_wall_s": med("typed", "wall"),
        "per_item_us": per_item,
        "overhead_ratio": per_item["dataset"] / per_item["typed"],
        "peak_mb": {k: med(k, "peak_mb") for k in runs},
        "export_csv_s": med("dataset", "export_csv"),
        "export_parquet_s": med("dataset", "export_parquet"),
        "rerun_calls": [r["rerun_calls"] for r in runs["dataset"]],
        "rerun_wall_s": med("dataset", "rerun_wall"),
    }


def report(result: dict[str, Any]) -> list[str]:
    """Markdown lines for bench/README.md."""
    s, n = result["summary"], result["rows"]
    return [
        f"## Datasets: {n:,}-row CSV fan-out with a schema, offline "
        f"(median of {result['repeats']})",
        "",
        "| measure | dataset (`items_from: {path, key}`) | typed (`items:`) | target |",
        "|---|---|---|---|",
        f"| wall | {s['dataset_wall_s']:.1f} s | {s['typed_wall_s']:.1f} s | |",
        f"| per item | {s['per_item_us']['dataset']:.0f} us | {s['per_item_us']['typed']:.0f} us "
        f"| dataset/typed {s['overhead_ratio']:.2f}x (<= 1.2x) |",
        f"| peak RSS | {s['peak_mb']['dataset']:.0f} MB | {s['peak_mb']['typed']:.0f} MB "
        "| <= 300 MB |",
        f"| export CSV / Parquet | {s['export_csv_s']:.1f} s / {s['export_parquet_s']:.1f} s | "
        "| < 10 s |",
        f"| rerun, 1% rows edited | {s['rerun_calls']} calls in {s['rerun_wall_s']:.1f} s | "
        f"| exactly {n // 100} |",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.rows, args.repeats)
    out = Path(__file__).resolve().parent / "results" / "datasets.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("\n".join(report(result)))


if __name__ == "__main__":
    main()
