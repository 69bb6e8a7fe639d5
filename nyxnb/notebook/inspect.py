"""Look at runs: DuckDB SQL over the store's tables, pandas DataFrames, Parquet, and plots.

    con = nyxnb.notebook.inspect.connect(store)            # every store table, under its own name
    con.sql('SELECT provider, sum(cost_usd) FROM llm_calls GROUP BY 1').df()
    steps_df(store, wf)  items_df(store, wf)  calls_df(store)  cost_by(store, ["step", "provider"])
    export_parquet(store, "out/")                 # one file per table
    plot_latency(store, wf)  plot_cost(store, wf)  plot_progress(store, wf)
    results_df(store, wf)  results_views(con, store, wf)   # a step's table: inputs + output fields

DuckDB's sqlite and postgres scanners are extension downloads, which fail offline, so each table
is read through SQLAlchemy into Arrow (typed from the table's columns, JSON as text) and copied
into an in-memory DuckDB database: the connection is a snapshot taken by :func:`connect`, on
SQLite and PostgreSQL stores alike.  Plots are :class:`matplotlib.figure.Figure` objects built
without pyplot, so they render headless (Agg) and display inline in a notebook.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    MetaData,
    Numeric,
    create_engine,
    select,
)
from sqlalchemy.pool import NullPool

from nyxnb.errors import RunError
from nyxnb.notebook.progress import money, tokens_text
from nyxnb.notebook.results import results_df as results_df  # a step's table
from nyxnb.notebook.results import results_views as results_views
from nyxnb.notebook.state import Answered
from nyxnb.reports.summary import workflow_summary
from nyxnb.store.database import Store, open_store
from nyxnb.store.models import (
    COMPLETED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    LlmCall,
    Project,
    Tenant,
    Workflow,
    WorkflowStep,
)

if TYPE_CHECKING:
    import duckdb
    import pandas as pd
    import pyarrow as pa
    from matplotlib.figure import Figure

StoreArg = Store | str | None
_STATUS_COLORS: dict[str, str] = {
    COMPLETED: "#2e7d32",
    RUNNING: "#1565c0",
    FAILED: "#c62828",
    PAUSED: "#ef6c00",
    PENDING: "#bdbdbd",
}


def reader(store: Store) -> Store:
    """The same store for reading only: on SQLite, no ``BEGIN IMMEDIATE``, so a run never waits.

    WAL readers need no lock; the store's own sessions take the write lock up front, which would
    make a running workflow wait for every poll and every table copy.
    """
    db = store.url.database
    if store.dialect != "sqlite" or not db or db == ":memory:":
        return store
    args = {"timeout": 30, "check_same_thread": False}
    return Store(create_engine(store.url, poolclass=NullPool, connect_args=args))


def _store(store: StoreArg) -> Store:
    return reader(store if isinstance(store, Store) else open_store(store))


def _arrow_type(column: Any) -> pa.DataType:
    import pyarrow as pa

    t = column.type
    if isinstance(t, Boolean):
        return pa.bool_()
    if isinstance(t, Integer):
        return pa.int64()
    if isinstance(t, Float | Numeric):
        return pa.float64()
    if isinstance(t, DateTime):
        return pa.timestamp("us", tz="UTC")
    return pa.string()  # text, ids, and JSON serialised as JSON text


def read_tables(store: StoreArg = None) -> dict[str, pa.Table]:
    """Every table of the store as a typed Arrow table (JSON columns as JSON text)."""
    import pyarrow as pa

    st = _store(store)
    meta = MetaData()
    meta.reflect(st.engine)
    out: dict[str, pa.Table] = {}
    with st.engine.connect() as conn:
        for name, table in sorted(meta.tables.items()):
            schema = pa.schema([(c.name, _arrow_type(c)) for c in table.columns])
            json_cols = [c.name for c in table.columns if isinstance(c.type, JSON)]
            rows = [dict(r) for r in conn.execute(select(table)).mappings()]
            for row in rows:
                for col in json_cols:
                    if row[col] is not None and not isinstance(row[col], str):
                        row[col] = json.dumps(row[col], default=str)
            out[name] = pa.Table.from_pylist(rows, schema=schema)
    return out


def connect(store: StoreArg = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection holding a snapshot of every store table, same names.

    Quote the column ``"order"`` of ``workflow_steps`` (a reserved word) in SQL.
    """
    import duckdb

    con = duckdb.connect()
    for name, table in read_tables(store).items():
        con.register("_nyxnb_src", table)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _nyxnb_src')
        con.unregister("_nyxnb_src")
    return con


def export_parquet(store: StoreArg, folder: str | Path) -> list[Path]:
    """Write every store table to ``folder/<table>.parquet``; returns the files written."""
    import pyarrow.parquet as pq

    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in read_tables(store).items():
        path = target / f"{name}.parquet"
        pq.write_table(table, path)
        written.append(path)
    return written


def steps_df(store: StoreArg, workflow_id: str, *, tenant: str | None = None) -> pd.DataFrame:
    """One row per step: order, name, type, persona, provider, status, items, tokens, cost,
    score, prompt (the template), output and error."""
    import pandas as pd

    st = _store(store)
    summary = workflow_summary(st, workflow_id, tenant_id=st.tenant_id(tenant), with_items=False)
    cols = [
        "order",
        "name",
        "type",
        "persona",
        "provider",
        "status",
        "auto_generated",
        "items_done",
        "items_total",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
        "score",
        "prompt",
        "output",
        "error",
    ]
    frame = pd.DataFrame([asdict(s) for s in summary.steps], columns=cols)
    return frame.astype({"input_tokens": "int64", "output_tokens": "int64"})


def items_df(
    store: StoreArg, workflow_id: str, *, step: str | None = None, tenant: str | None = None
) -> pd.DataFrame:
    """One row per fan-out item: step, idx, heading, status, provider, output, error."""
    import pandas as pd

    st = _store(store)
    summary = workflow_summary(st, workflow_id, tenant_id=st.tenant_id(tenant))
    rows = [
        {"step": s.name, **asdict(item)}
        for s in summary.steps
        for item in s.items or ()
        if step is None or s.name == step
    ]
    cols = ["step", "idx", "heading", "status", "provider", "output", "error"]
    return pd.DataFrame(rows, columns=cols)


def calls_df(
    store: StoreArg = None, workflow_id: str | None = None, *, tenant: str | None = None
) -> pd.DataFrame:
    """Every provider attempt (``llm_calls``) with its step name, tokens, cost and latency."""
    import pandas as pd

    st = _store(store)
    query = (
        select(
            LlmCall.created_at,
            LlmCall.workflow_id,
            Workflow.name.label("workflow"),
            WorkflowStep.name.label("step"),
            WorkflowStep.type.label("step_type"),
            LlmCall.item_idx,
            LlmCall.provider,
            LlmCall.model,
            LlmCall.attempt,
            LlmCall.outcome,
            LlmCall.error_kind,
            LlmCall.input_tokens,
            LlmCall.output_tokens,
            LlmCall.cached_input_tokens,
            LlmCall.cache_write_tokens,
            LlmCall.reasoning_tokens,
            LlmCall.cost_usd,
            LlmCall.latency_ms,
            LlmCall.cached,
            LlmCall.service_tier,
            LlmCall.api_tier,
            LlmCall.batch_id,
        )
        .outerjoin(WorkflowStep, WorkflowStep.id == LlmCall.step_id)
        .outerjoin(Workflow, Workflow.id == LlmCall.workflow_id)
        .order_by(LlmCall.created_at, WorkflowStep.order, LlmCall.item_idx, LlmCall.attempt)
    )
    if workflow_id is not None:
        query = query.where(LlmCall.workflow_id == workflow_id)
    tenant_id = st.tenant_id(tenant)
    if tenant_id is not None:
        query = query.where(LlmCall.tenant_id == tenant_id)
    with st.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    cols = list(query.selected_columns.keys())
    frame = pd.DataFrame(rows, columns=cols)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    frame["item_idx"] = frame["item_idx"].astype("Int64")
    return frame


def cost_by(
    store: StoreArg = None,
    by: str | Sequence[str] = ("step", "provider"),
    *,
    workflow_id: str | None = None,
    tenant: str | None = None,
) -> pd.DataFrame:
    """Calls, tokens, cost and mean latency grouped by columns of :func:`calls_df`."""
    keys = [by] if isinstance(by, str) else list(by)
    calls = calls_df(store, workflow_id, tenant=tenant)
    calls["ok"] = (calls["outcome"] != "error").astype("int64")
    grouped = calls.groupby(keys, dropna=False, sort=False).agg(  # in run order
        calls=("provider", "size"),
        ok=("ok", "sum"),
        input_tokens=("input_tokens", "sum"),
        output_tokens=("output_tokens", "sum"),
        reasoning_tokens=("reasoning_tokens", "sum"),
        cost_usd=("cost_usd", "sum"),
        mean_latency_ms=("latency_ms", "mean"),
    )
    return grouped.reset_index()


# -- plots -----------------------------------------------------------------------------------


def _figure(width: float, height: float, constrained: bool = True) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained" if constrained else None)


def plot_latency(store: StoreArg, workflow_id: str, *, step: str | None = None) -> Figure:
    """Latency of every fan-out item's calls (ms) by item name, coloured by provider; errors
    hatched."""
    calls = calls_df(store, workflow_id)
    calls = calls[calls["item_idx"].notna()]
    if step is not None:
        calls = calls[calls["step"] == step]
    items = items_df(store, workflow_id, step=step)
    names = {(r.step, r.idx): r.heading or f"item {r.idx}" for r in items.itertuples()}
    keys = sorted(set(zip(calls["step"], calls["item_idx"].astype(int), strict=True)))
    slot = {key: i for i, key in enumerate(keys)}
    fig = _figure(9, 3.9)
    ax = fig.add_subplot()
    providers = sorted(calls["provider"].unique())
    colors = dict(
        zip(providers, ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#757575"), strict=False)
    )
    for provider in providers:
        part = calls[calls["provider"] == provider]
        x = [slot[k] for k in zip(part["step"], part["item_idx"].astype(int), strict=True)]
        errors = (part["outcome"] == "error").tolist()
        for failed in (False, True):
            xs = [v for v, e in zip(x, errors, strict=True) if e == failed]
            ys = [v for v, e in zip(part["latency_ms"], errors, strict=True) if e == failed]
            if xs:
                ax.bar(xs, ys, width=0.8, label=f"{provider} (error)" if failed else provider,
                       color="none" if failed else colors.get(provider),
                       edgecolor=colors.get(provider), hatch="//" if failed else None)  # fmt: skip
    labels = [names.get(k, f"item {k[1]}") for k in keys]
    ax.set_xticks(range(len(keys)), labels, rotation=35, ha="right", fontsize="small")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"per-item latency{f' of {step}' if step else ''}")
    if providers:
        ax.legend(loc="upper right", fontsize="small")
    return fig


#: Provider calls outside any step (a run's digest) are one bar, named so.
NO_STEP = "digest (no step)"


def plot_cost(store: StoreArg, workflow_id: str | None = None) -> Figure:
    """Input and output tokens by step, and cost by step and provider (two panels)."""
    table = cost_by(store, ["step", "provider"], workflow_id=workflow_id)
    order = list(dict.fromkeys(calls_df(store, workflow_id)["step"].fillna(NO_STEP)))
    table["step"] = table["step"].fillna(NO_STEP)
    fig = _figure(10, 1.1 + 0.28 * max(len(order), 1))
    axes = fig.subplots(1, 2, sharey=True)
    by_step = table.groupby("step")[["input_tokens", "output_tokens"]].sum()
    left = [0.0] * len(order)
    for column, color in (("input_tokens", "#1565c0"), ("output_tokens", "#ef6c00")):
        values = [float(by_step[column].get(s, 0)) for s in order]
        axes[0].barh(order, values, left=left, color=color, label=column.split("_")[0])
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes[0].set_xlabel("tokens")
    axes[0].legend(loc="lower right", fontsize="small")
    left = [0.0] * len(order)
    for provider in sorted(table["provider"].unique()):
        part = table[table["provider"] == provider].set_index("step")["cost_usd"]
        values = [float(part.get(s, 0.0)) for s in order]
        axes[1].barh(order, values, left=left, label=provider)
        left = [a + b for a, b in zip(left, values, strict=True)]
    if max(left, default=0.0) <= 0:  # nothing priced: say so instead of an axis around zero
        axes[1].set_xlim(0, 1)
        axes[1].set_xticks([])
        axes[1].text(0.5, 0.5, "not priced\n(offline or local provider)", ha="center",
                     va="center", transform=axes[1].transAxes, color="#757575")  # fmt: skip
    else:
        axes[1].set_xlim(left=0)
        axes[1].legend(loc="lower right", fontsize="small")
    axes[0].set_xlim(left=0)
    axes[1].set_xlabel("cost (USD)")
    axes[0].invert_yaxis()
    fig.suptitle("tokens (input and output) and cost by step")
    return fig


def step_context(store: Store, workflow_id: str) -> dict[int, tuple[str, str | None]]:
    """Per step order: an implementation prompt's feature, and the provider that answered last."""
    steps = select(WorkflowStep.order, WorkflowStep.type, WorkflowStep.config)
    used = select(WorkflowStep.order, LlmCall.provider).join(WorkflowStep)
    used = used.where(LlmCall.workflow_id == workflow_id, LlmCall.outcome != "error")
    with store.engine.connect() as conn:
        providers = dict(conn.execute(used.order_by(LlmCall.created_at, LlmCall.id)).all())
        rows = conn.execute(steps.where(WorkflowStep.workflow_id == workflow_id))
        heading = {o: str(c.get("heading", "")) for o, t, c in rows if t == "implementation-prompt"}
    return {o: (heading.get(o, ""), providers.get(o)) for o in {*heading, *providers}}


def plot_progress(store: StoreArg, workflow_id: str) -> Figure:
    """The run as the progress widget shows it: a row per step, its status, a bar, the item."""
    from matplotlib.patches import Rectangle

    st = _store(store)
    summary = workflow_summary(st, workflow_id, with_items=False)
    context, steps = step_context(st, workflow_id), summary.steps
    fig = _figure(11.5, 0.75 + 0.3 * (len(steps) + 1), constrained=False)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, 100)
    ax.set_ylim(len(steps) + 2.1, -0.1)
    t, done = summary.totals, sum(s.status == COMPLETED for s in steps)
    head = (
        f"{summary.name}: {summary.shown_status}, {done}/{summary.total_steps} steps · "
        f"{tokens_text(t.input_tokens, t.output_tokens)} tokens · {money(t.cost_usd)}"
    )
    ax.text(1, 0.5, head, weight="bold", va="center", fontsize=10)
    cols = {"#": 1, "step": 3.5, "type": 17, "persona": 31, "provider": 42, "status": 51,
            "items": 76.5, "current": 83}  # fmt: skip
    for name, x in cols.items():
        ax.text(x, 1.5, name, weight="bold", va="center", fontsize=9)
    for i, s in enumerate(steps):
        y, color = i + 2.5, _STATUS_COLORS.get(s.status, "#757575")
        heading, used = context.get(s.order, ("", None))
        provider = None if s.type == "pattern-check" else used or s.provider
        total = s.items_total
        items = f"{s.items_done}/{total}" if total else ""
        values = [str(s.order), s.name, s.type, s.persona or "", provider or "", s.status, items,
                  heading[:28]]  # fmt: skip
        for (name, x), value in zip(cols.items(), values, strict=True):
            status = name == "status"
            ax.text(x, y, value, va="center", fontsize=9, color=color if status else "black",
                    weight="bold" if status else "normal")  # fmt: skip
        share = s.items_done / total if total else float(s.status == COMPLETED)
        ax.add_patch(Rectangle((60, y - 0.3), 15, 0.6, color="#e0e0e0", linewidth=0))
        ax.add_patch(Rectangle((60, y - 0.3), 15 * share, 0.6, color=color, linewidth=0))
    return fig


def answered(store: Store, workflow_id: str) -> dict[int, Answered]:
    """Per step order: the providers and models whose answers were kept, and cache hits."""
    query = (
        select(WorkflowStep.order, LlmCall.provider, LlmCall.model, LlmCall.outcome)
        .join(WorkflowStep, WorkflowStep.id == LlmCall.step_id)
        .where(LlmCall.workflow_id == workflow_id, LlmCall.outcome.in_(("ok", "cached")))
        .order_by(LlmCall.created_at, LlmCall.id)
    )
    seen: dict[int, tuple[dict[str, None], dict[str, None], list[int]]] = {}
    with store.reading() as conn:
        for order, provider, model, outcome in conn.execute(query):
            providers, models, counts = seen.setdefault(order, ({}, {}, [0, 0]))
            providers[provider], models[model] = None, None
            counts[0], counts[1] = counts[0] + 1, counts[1] + (outcome == "cached")
    return {
        order: Answered(", ".join(p), ", ".join(m for m in ms if m), *counts)
        for order, (p, ms, counts) in seen.items()
    }


def latest_workflow(store: Store, *, tenant: str | None = None, project: str | None = None) -> str:
    """The id of the most recently created workflow (of ``tenant`` / ``project`` when given)."""
    query = select(Workflow.id).order_by(Workflow.created_at.desc()).limit(1)
    if tenant is not None:
        query = query.join(Tenant, Tenant.id == Workflow.tenant_id).where(Tenant.slug == tenant)
    if project is not None:
        query = query.join(Project, Project.id == Workflow.project_id)
        query = query.where(Project.name == project)
    with store.reading() as conn:
        found = conn.scalar(query)
    if found is None:
        where = " ".join(x for x in (tenant, project) if x) or "the store"
        raise RunError(f"no workflow in {where}", hint="run one first (notebook 01's run cell)")
    return str(found)
