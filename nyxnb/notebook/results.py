"""A step's results as a DataFrame, and as DuckDB views with the output fields as columns.

    results_df(store, wf)                        # one row per item: key, inputs, fields, cost
    con = connect(store); results_views(con, store, wf)
    con.sql('SELECT label, count(*) FROM results_tickets GROUP BY 1').df()

Both read the same table as ``nyxnb export`` (:mod:`nyxnb.reports.table`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from nyxnb.reports.table import LEDGER_COLUMNS, ResultTable, result_batches, result_table
from nyxnb.store.database import Store, open_store
from nyxnb.store.models import WorkflowStep

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

_SQL_TYPES = {"integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN"}


def _store(store: Store | str | None) -> Store:
    return store if isinstance(store, Store) else open_store(store)


def results_df(
    store: Store | str | None, workflow_id: str, step: str | None = None
) -> pd.DataFrame:
    """A step's table (default: the last fan-out step) as a DataFrame, built batch by batch."""
    import pandas as pd

    st = _store(store)
    table = result_table(st, workflow_id, step)
    frames = [pd.DataFrame(batch, columns=table.columns) for batch in result_batches(st, table)]
    if not frames:
        return pd.DataFrame(columns=table.columns)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _path(name: str) -> str:
    return "$." + _quote(name)


def _field(name: str, schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    text = f"json_extract_string(i.output, '{_path(name)}')"
    if kind in _SQL_TYPES:
        return f"TRY_CAST({text} AS {_SQL_TYPES[kind]}) AS {_quote(name)}"
    if kind == "string":
        return f"{text} AS {_quote(name)}"
    return f"json_extract(i.output, '{_path(name)}') AS {_quote(name)}"


def _view_sql(table: ResultTable, schema: dict[str, Any]) -> str:
    props = schema.get("properties") or {}
    cols = ["i.key", "i.heading"]
    cols += [
        f"json_extract_string(i.data, '{_path(c)}') AS {_quote(table.input_name(c))}"
        for c in table.inputs
    ]
    cols += [_field(f, props.get(f) or {}) for f in table.fields] or ["i.output"]
    cols += ["i.status", "i.provider", "c.model", "c.input_tokens", "c.output_tokens", "c.cost_usd"]
    assert len(cols) == len(table.columns) and LEDGER_COLUMNS[0] == "status"
    step = table.step_id.replace("'", "''")
    ledger = (
        "SELECT item_idx, max(CASE WHEN outcome IN ('ok', 'cached') THEN model END) AS model, "
        "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
        f"sum(cost_usd) AS cost_usd FROM llm_calls WHERE step_id = '{step}' GROUP BY item_idx"
    )
    return (
        f"SELECT {', '.join(cols)} FROM step_items i LEFT JOIN ({ledger}) c "
        f"ON c.item_idx = i.idx WHERE i.step_id = '{step}' ORDER BY i.idx"
    )


def results_views(
    con: duckdb.DuckDBPyConnection, store: Store | str | None, workflow_id: str
) -> list[str]:
    """Create ``results_<step>`` views (output fields as typed columns) over a
    :func:`nyxnb.notebook.inspect.connect` snapshot, one per fan-out step; returns their names."""
    st = _store(store)
    with st.session(read_only=True) as s:
        query = select(WorkflowStep.name, WorkflowStep.config).where(
            WorkflowStep.workflow_id == workflow_id,
            WorkflowStep.type == "fan-out",
            WorkflowStep.auto_generated.is_(False),
        )
        steps = [(name, dict(config or {})) for name, config in s.execute(query)]
    names = []
    for name, config in steps:
        table = result_table(st, workflow_id, name)
        view = "results_" + re.sub(r"\W", "_", name)
        sql = _view_sql(table, config.get("output_schema") or {})
        con.execute(f"CREATE OR REPLACE VIEW {_quote(view)} AS {sql}")
        names.append(view)
    return names
