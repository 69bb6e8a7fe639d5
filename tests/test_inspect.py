"""nyxnb.notebook.inspect: DuckDB over every store table, DataFrames, Parquet, plots."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest
from helpers import minimal, three_steps
from matplotlib.figure import Figure
from sqlalchemy import func, select

import nyxnb
import nyxnb.notebook.inspect as ni
from nyxnb.store.models import LlmCall


def spec(n_items: int = 5) -> dict[str, Any]:
    return three_steps("inspect-test", n_items)


@pytest.fixture
def run(store):
    """A store with the sample data and one finished offline run; returns (store, workflow id)."""
    minimal(store)
    result = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=store)
    assert result.ok
    return store, result.workflow_id


def test_connect_exposes_every_table_under_its_own_name(run) -> None:
    store, workflow_id = run
    con = ni.connect(store)
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert tables == set(store.table_names())
    with store.engine.connect() as conn:
        calls = conn.scalar(select(func.count()).select_from(LlmCall))
    assert con.execute("SELECT count(*) FROM llm_calls").fetchone() == (calls,)
    joined = con.execute(
        """SELECT s.name, count(c.id) FROM workflow_steps s
           JOIN llm_calls c ON c.step_id = s.id WHERE s.workflow_id = ?
           GROUP BY s.name, s."order" ORDER BY s."order" """,
        [workflow_id],
    ).fetchall()
    assert joined == [("analysis", 1), ("features", 5), ("synthesis", 1)]


def test_columns_are_typed_and_json_is_text(run) -> None:
    store, workflow_id = run
    con = ni.connect(store)
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'workflows'").fetchall())  # fmt: skip
    assert types["created_at"].startswith("TIMESTAMP") and types["spec"] == "VARCHAR"
    assert types["pause_requested"] == "BOOLEAN"
    spec_text = con.execute("SELECT spec FROM workflows WHERE id = ?", [workflow_id]).fetchone()
    assert json.loads(spec_text[0])["name"] == "inspect-test"


def test_an_empty_store_still_has_typed_tables(store) -> None:
    con = ni.connect(store)
    assert con.execute("SELECT count(*), sum(cost_usd) FROM llm_calls").fetchone() == (0, None)


def test_dataframes_of_steps_items_and_calls(run) -> None:
    store, workflow_id = run
    steps = ni.steps_df(store, workflow_id)
    assert list(steps["name"]) == ["analysis", "features", "synthesis"]
    assert list(steps["status"]) == ["completed"] * 3 and steps.loc[1, "items_done"] == 5
    items = ni.items_df(store, workflow_id, step="features")
    assert list(items["heading"]) == [f"Feature {i}" for i in range(5)]
    assert items["output"].str.startswith("[offline]").all()
    calls = ni.calls_df(store, workflow_id)
    assert len(calls) == 7 and set(calls["provider"]) == {"offline"}
    assert str(calls["item_idx"].dtype) == "Int64" and calls["item_idx"].isna().sum() == 2
    assert pd.api.types.is_datetime64_any_dtype(calls["created_at"])
    assert len(ni.calls_df(store)) >= 7  # every workflow


def test_cost_by_sums_the_ledger(run) -> None:
    store, workflow_id = run
    by_step = ni.cost_by(store, ["step", "provider"], workflow_id=workflow_id)
    assert list(by_step["step"]) == ["analysis", "features", "synthesis"]  # in run order
    assert list(by_step["calls"]) == [1, 5, 1]
    calls = ni.calls_df(store, workflow_id)
    assert by_step["input_tokens"].sum() == calls["input_tokens"].sum()
    by_provider = ni.cost_by(store, "provider", workflow_id=workflow_id)
    assert by_provider.to_dict("records")[0]["ok"] == 7


def test_export_parquet_writes_every_table(run, tmp_path) -> None:
    store, _ = run
    files = ni.export_parquet(store, tmp_path / "out")
    assert {f.stem for f in files} == set(store.table_names())
    calls = pd.read_parquet(tmp_path / "out" / "llm_calls.parquet")
    assert len(calls) == len(ni.calls_df(store)) and "latency_ms" in calls.columns


def test_plots_are_figures_that_render_headless(run, tmp_path) -> None:
    store, workflow_id = run
    latency = ni.plot_latency(store, workflow_id, step="features")
    for fig in (latency, ni.plot_cost(store, workflow_id), ni.plot_progress(store, workflow_id)):
        assert isinstance(fig, Figure) and fig.axes
        path = tmp_path / "plot.png"
        fig.savefig(path)
        assert path.stat().st_size > 1000
    bars = ni.plot_latency(store, workflow_id).axes[0].patches
    assert len(bars) == 5  # one per fan-out item


def test_reading_does_not_take_the_write_lock(sqlite_store) -> None:
    """The inspect reader of a SQLite store never issues BEGIN IMMEDIATE (a run never waits)."""
    reader = ni.reader(sqlite_store)
    assert reader is not sqlite_store
    with sqlite_store.engine.connect() as writer:
        writer.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE: holds the write lock
        assert reader.table_names()
        assert ni.calls_df(sqlite_store).empty
        writer.rollback()
