"""Benchmark: tenant migration and workflow clone, on SQLite and (if configured) PostgreSQL.

    python bench/bench_migrate.py            # SQLite; PostgreSQL too when NYXNB_TEST_PG_URL is set
    python bench/bench_migrate.py --quick    # smaller sizes, one backend run each

For N workflow insights (25k, 50k, 100k) and N/100 workflows, each with 5 steps (one fan-out with
4 items and 4 llm_calls), the project is planned, applied and reversed 3 times; the median seconds
are printed with the cost per moved row, the per-row cost ratio against the smallest size (1.0 is
perfectly linear) and the ratio against the physical floor: one bare set-based ``UPDATE ... SET
tenant_id`` per table over the same rows, rolled back.  Then a 1,000-step workflow is cloned.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nyxnb.store import Store, open_store  # noqa: E402
from nyxnb.store import models as m  # noqa: E402
from nyxnb.tenants.clone import clone_workflow  # noqa: E402
from nyxnb.tenants.migrate import apply_migration, plan_migration, reverse_migration  # noqa: E402

PG_ENV = "NYXNB_TEST_PG_URL"
STEPS, ITEMS = 5, 4


def rows_for(n_insights: int) -> dict[type[m.Base], list[dict[str, Any]]]:
    """The bulk rows of one project: insights, workflows, steps, items, calls, patterns."""
    ids = {"tenant_id": "src", "project_id": "p"}
    out: dict[type[m.Base], list[dict[str, Any]]] = {k: [] for k in BULK}
    out[m.CodePattern] = [
        {"id": uid(), "tenant_id": "src", "repository_id": "r", "name": f"p{i}", "rule": "x"}
        for i in range(234)
    ]
    workflows = [uid() for _ in range(max(1, n_insights // 100))]
    for w in workflows:
        out[m.Workflow].append({"id": w, **ids, "name": f"wf {w[:8]}", "status": "completed"})
        for order in range(STEPS):
            step = uid()
            out[m.WorkflowStep].append({"id": step, "tenant_id": "src", "workflow_id": w,
                                        "order": order, "name": f"s{order}",
                                        "type": "fan-out" if order == 1 else "llm",
                                        "status": "completed", "output": "o" * 200})  # fmt: skip
            if order == 1:
                for idx in range(ITEMS):
                    out[m.StepItem].append({"id": uid(), "tenant_id": "src", "step_id": step,
                                            "idx": idx, "heading": f"h{idx}", "output": "x" * 300,
                                            "status": "completed"})  # fmt: skip
                    out[m.LlmCall].append({"id": uid(), "tenant_id": "src", "workflow_id": w,
                                           "step_id": step, "item_idx": idx, "provider": "offline",
                                           "outcome": "ok", "input_tokens": 100})  # fmt: skip
    out[m.WorkflowInsight] = [
        {"id": uid(), **ids, "workflow_id": workflows[i % len(workflows)],
         "content": f"insight {i}: " + "lorem ipsum " * 8}
        for i in range(n_insights)
    ]  # fmt: skip
    return out


BULK = (m.CodePattern, m.Workflow, m.WorkflowStep, m.StepItem, m.LlmCall, m.WorkflowInsight)


def uid() -> str:
    return str(uuid.uuid4())


def build(store: Store, n_insights: int) -> dict[str, str]:
    """Tenants src/dst, project P (with repo) in src and the empty duplicates in dst."""
    names = {k: uid() for k in ("src", "dst", "p", "r", "dup", "dup_repo")}
    tenants = [{"id": names[k], "slug": k, "name": k.title()} for k in ("src", "dst")]
    projects = [
        {"id": names[p], "tenant_id": names[t], "name": "Big", "description": ""}
        for p, t in (("p", "src"), ("dup", "dst"))
    ]
    repos = [
        {
            "id": names[r],
            "tenant_id": names[t],
            "project_id": names[p],
            "owner": "big",
            "repo": "Big",
        }
        for r, t, p in (("r", "src", "p"), ("dup_repo", "dst", "dup"))
    ]
    swap = {"src": names["src"], "p": names["p"], "r": names["r"]}
    with store.engine.begin() as conn:
        for model, rows in ((m.Tenant, tenants), (m.Project, projects), (m.Repository, repos)):
            conn.execute(insert(model), rows)
        for model, rows in rows_for(n_insights).items():
            for row in rows:
                for key in ("tenant_id", "project_id", "repository_id"):
                    if row.get(key) in swap:
                        row[key] = swap[row[key]]
            for i in range(0, len(rows), 20_000):
                conn.execute(insert(model), rows[i : i + 20_000])
    if store.dialect == "postgresql":  # what autovacuum would have done by the time anyone migrates
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return names


def floor_seconds(store: Store, names: dict[str, str]) -> float:
    """The physical floor: bare set-based tenant updates of the same rows, rolled back."""
    started = time.perf_counter()
    with store.engine.connect() as conn:
        trans = conn.begin()
        wf = m.Workflow.__table__
        steps = m.WorkflowStep.__table__
        in_wf = wf.c.project_id == names["p"]
        wf_ids = select(wf.c.id).where(in_wf)
        step_ids = select(steps.c.id).where(steps.c.workflow_id.in_(wf_ids))
        targets: list[tuple[Any, Any]] = [
            (m.WorkflowInsight.__table__, m.WorkflowInsight.__table__.c.project_id == names["p"]),
            (m.StepItem.__table__, m.StepItem.__table__.c.step_id.in_(step_ids)),
            (m.LlmCall.__table__, m.LlmCall.__table__.c.workflow_id.in_(wf_ids)),
            (steps, steps.c.workflow_id.in_(wf_ids)),
            (m.CodePattern.__table__, m.CodePattern.__table__.c.repository_id == names["r"]),
            (wf, in_wf),
        ]
        for table, where in targets:
            conn.execute(update(table).where(where).values(tenant_id=names["dst"]))
        trans.rollback()
    return time.perf_counter() - started


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def one_size(store: Store, n: int, runs: int) -> dict[str, float]:
    names = build(store, n)
    plans, applies, reverses, floors = [], [], [], []
    total = 0
    for _ in range(runs):
        floors.append(floor_seconds(store, names))
        t_plan, plan = timed(lambda: plan_migration(store, "Big", "src", "dst"))
        t_apply, move = timed(lambda p=plan: apply_migration(store, p))
        t_rev, _ = timed(lambda mv=move: reverse_migration(store, mv.move_id))
        plans.append(t_plan), applies.append(t_apply), reverses.append(t_rev)
        total = plan.total_rows
    med = statistics.median
    return {"rows": total, "plan": med(plans), "apply": med(applies), "reverse": med(reverses),
            "floor": med(floors)}  # fmt: skip


def clone_bench(store: Store, runs: int) -> float:
    """Median seconds to clone a workflow of 1,000 steps (200 of them generated)."""
    names = build(store, 100)
    wf_id = uid()
    with store.engine.begin() as conn:
        conn.execute(insert(m.Workflow), [{"id": wf_id, "tenant_id": names["src"],
                                           "project_id": names["p"], "name": "long"}])  # fmt: skip
        conn.execute(insert(m.WorkflowStep), [
            {"id": uid(), "tenant_id": names["src"], "workflow_id": wf_id, "order": 999 - i,
             "name": f"s{i}", "status": "completed", "output": "x" * 100,
             "auto_generated": i % 5 == 0} for i in range(1000)])  # fmt: skip
    times = []
    for _ in range(runs):
        seconds, clone = timed(lambda: clone_workflow(store, wf_id))
        assert len(clone.steps) == 800
        times.append(seconds)
    return statistics.median(times)


@contextmanager
def fresh_store(backend: str) -> Iterator[Store]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(f"sqlite:///{tmp}/bench.db")
            yield store
            store.dispose()
        return
    server = os.environ[PG_ENV]
    name = "nyx_bench_" + uuid.uuid4().hex[:8]
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    store = open_store(server.rsplit("/", 1)[0] + "/" + name)
    try:
        yield store
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(backend: str, sizes: list[int], runs: int) -> None:
    print(f"\n{backend}: plan + apply + reverse, median of {runs} runs")
    print(f"{'insights':>9} {'rows':>8} {'plan s':>7} {'apply s':>8} {'reverse s':>9} "
          f"{'us/row':>7} {'linear':>6} {'x floor':>7}")  # fmt: skip
    base = None
    for n in sizes:
        with fresh_store(backend) as store:
            r = one_size(store, n, runs)
        per_row = (r["plan"] + r["apply"]) / r["rows"] * 1e6
        base = base or per_row
        print(f"{n:>9} {r['rows']:>8.0f} {r['plan']:>7.2f} {r['apply']:>8.2f} "
              f"{r['reverse']:>9.2f} {per_row:>7.1f} {per_row / base:>6.2f} "
              f"{r['apply'] / r['floor']:>7.1f}")  # fmt: skip
        if r["plan"] + r["apply"] >= 10:
            print(f"  !! plan + apply took {r['plan'] + r['apply']:.1f} s (budget: 10 s)")
    with fresh_store(backend) as store:
        print(f"clone of a 1,000-step workflow: {clone_bench(store, runs):.3f} s")


def main() -> None:
    """Run the benchmark on every configured backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 5k/10k/20k, one run each")
    args = parser.parse_args()
    sizes = [5_000, 10_000, 20_000] if args.quick else [25_000, 50_000, 100_000]
    runs = 1 if args.quick else 3
    backends = ["sqlite"] + (["postgresql"] if os.environ.get(PG_ENV) else [])
    started = time.perf_counter()
    for backend in backends:
        report(backend, sizes, runs)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
