"""A step's results as a table: one row per item, its inputs, its output fields, what it cost.

Columns: ``key``, ``heading``, the dataset's input columns (an input column named like an output
field is prefixed ``input_``), one column per top-level field of the step's ``output_schema``
(or ``output`` for a text step), then ``status``, ``provider``, ``model``, ``input_tokens``,
``output_tokens`` and ``cost_usd`` (summed over the item's attempts).  Rows stream from the store
in batches of :data:`BATCH_ROWS`, so exporting 100,000 rows keeps one batch in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, func, select

from nyxnb.datasets.table import write_table
from nyxnb.errors import NotFound
from nyxnb.store.database import Store
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep

BATCH_ROWS = 5000
LEDGER_COLUMNS = ("status", "provider", "model", "input_tokens", "output_tokens", "cost_usd")


@dataclass(frozen=True)
class ResultTable:
    """Which step a table reads, and its columns in order."""

    workflow_id: str
    step_id: str
    step: str
    inputs: tuple[str, ...]  # dataset columns as read
    fields: tuple[str, ...]  # top-level output fields (empty: the text output)

    @property
    def columns(self) -> list[str]:
        """The table's column names."""
        inputs = [self.input_name(c) for c in self.inputs]
        outputs = list(self.fields) or ["output"]
        return ["key", "heading", *inputs, *outputs, *LEDGER_COLUMNS]

    def input_name(self, column: str) -> str:
        """An input column's name in the table (``input_X`` when an output field is ``X``)."""
        reserved = {"key", "heading", *self.fields, *LEDGER_COLUMNS, "output"}
        return f"input_{column}" if column in reserved else column


def _fields(schema: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not schema or schema.get("type", "object") != "object":
        return ()
    return tuple((schema.get("properties") or {}).keys())


def _pick_step(steps: list[WorkflowStep], name: str | None, workflow_id: str) -> WorkflowStep:
    if name is not None:
        found = next((s for s in steps if s.name == name), None)
        if found is None:
            raise NotFound("step", name, hint=f"steps: {', '.join(s.name for s in steps)}")
        return found
    fanouts = [s for s in steps if s.type == "fan-out" and not s.auto_generated]
    if not fanouts:
        raise NotFound("fan-out step", workflow_id, hint="name a step with --step")
    return fanouts[-1]


def result_table(
    store: Store, workflow_id: str, step: str | None = None, *, tenant_id: str | None = None
) -> ResultTable:
    """The table of ``step`` (default: the workflow's last fan-out step)."""
    with store.session(tenant_id, read_only=True) as s:
        if s.get(Workflow, workflow_id) is None:
            raise NotFound("workflow", workflow_id, hint="list workflows with `nyxnb list`")
        steps = list(s.scalars(select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id)))
        row = _pick_step(sorted(steps, key=lambda x: x.order), step, workflow_id)
        config = dict(row.config or {})
        first = s.scalar(
            select(StepItem.data).where(StepItem.step_id == row.id).order_by(StepItem.idx).limit(1)
        )
    inputs = tuple(first) if isinstance(first, dict) else ()
    return ResultTable(workflow_id, row.id, row.name, inputs, _fields(config.get("output_schema")))


def _ledger(step_id: str) -> Any:
    ok = LlmCall.outcome.in_(("ok", "cached"))
    return (
        select(
            LlmCall.item_idx.label("idx"),
            func.max(case((ok, LlmCall.model))).label("model"),
            func.coalesce(func.sum(LlmCall.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(LlmCall.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(LlmCall.cost_usd), 0.0).label("cost_usd"),
        )
        .where(LlmCall.step_id == step_id, LlmCall.item_idx.is_not(None))
        .group_by(LlmCall.item_idx)
        .subquery()
    )


def _row(table: ResultTable, r: Any) -> dict[str, Any]:
    data = r["data"] if isinstance(r["data"], dict) else _loads(r["data"])
    out: dict[str, Any] = {"key": r["key"], "heading": r["heading"]}
    out.update({table.input_name(c): (data or {}).get(c) for c in table.inputs})
    if table.fields:
        parsed = _loads(r["output"])
        parsed = parsed if isinstance(parsed, dict) else {}
        out.update({f: parsed.get(f) for f in table.fields})
    else:
        out["output"] = r["output"]
    out.update({c: r[c] for c in LEDGER_COLUMNS})
    return out


def _loads(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


def result_batches(store: Store, table: ResultTable) -> Iterator[list[dict[str, Any]]]:
    """The table's rows in batches of :data:`BATCH_ROWS`, in item order (streamed)."""
    ledger = _ledger(table.step_id)
    query = (
        select(
            StepItem.idx,
            StepItem.key,
            StepItem.heading,
            StepItem.data,
            StepItem.output,
            StepItem.status,
            StepItem.provider,
            ledger.c.model,
            ledger.c.input_tokens,
            ledger.c.output_tokens,
            ledger.c.cost_usd,
        )
        .outerjoin(ledger, and_(ledger.c.idx == StepItem.idx))
        .where(StepItem.step_id == table.step_id)
        .order_by(StepItem.idx)
    )
    with store.reading() as conn:
        result = conn.execution_options(yield_per=BATCH_ROWS).execute(query).mappings()
        for part in result.partitions():
            yield [_row(table, r) for r in part]


def export_table(
    store: Store,
    workflow_id: str,
    out: str | Path,
    step: str | None = None,
    *,
    tenant_id: str | None = None,
) -> int:
    """Write a step's table to ``out`` (.csv, .jsonl or .parquet); returns the row count."""
    table = result_table(store, workflow_id, step, tenant_id=tenant_id)
    return write_table(result_batches(store, table), out, table.columns)
