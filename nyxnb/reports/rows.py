"""Rows of two runs of a dataset fan-out lined up by key: which changed, and which fields.

A row is ``changed`` when its input columns or its output differ, ``added`` when only the newer
run has its key and ``removed`` when only the older one does.  For a structured output the
changed top-level fields are named; a text output is one field, ``output``.  Rows are read in
key order through the store's cursor, never both steps whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select

from nyxnb.store.database import Store
from nyxnb.store.models import StepItem

#: Rows described one by one; the rest are only counted.
SHOWN = 20


@dataclass(frozen=True)
class RowChange:
    """One row that differs: its key, how, the input columns and output fields that changed."""

    key: str
    kind: str  # changed | added | removed
    inputs: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowChanges:
    """How a run's rows differ from the first run's (by key)."""

    changed: int
    added: int
    removed: int
    rows: tuple[RowChange, ...]  # the first :data:`SHOWN`, in key order

    @property
    def any(self) -> bool:
        """True when some row differs."""
        return bool(self.changed or self.added or self.removed)


def _as_fields(output: str | None) -> dict[str, Any]:
    try:
        value = json.loads(output or "")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"output": output}


def _differing(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[str, ...]:
    a, b = dict(old or {}), dict(new or {})
    return tuple(k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k))


def _pairs(store: Store, left: str, right: str) -> Iterator[Any]:
    """Rows of step ``left`` with the row of ``right`` that has their key (or none)."""
    a, b = StepItem.__table__.alias("a"), StepItem.__table__.alias("b")
    query = (
        select(
            a.c.key,
            a.c.data.label("a_data"),
            a.c.output.label("a_output"),
            b.c.key.label("b_key"),
            b.c.data.label("b_data"),
            b.c.output.label("b_output"),
        )
        .outerjoin(b, and_(b.c.step_id == right, b.c.key == a.c.key))
        .where(a.c.step_id == left, a.c.key.is_not(None))
        .order_by(a.c.key)
    )
    with store.reading() as conn:
        yield from conn.execution_options(yield_per=2000).execute(query).mappings()


def row_changes(store: Store, old_step: str, new_step: str) -> RowChanges | None:
    """How ``new_step``'s rows differ from ``old_step``'s; None when the steps have no keys."""
    counts = {"changed": 0, "added": 0, "removed": 0}
    shown: list[RowChange] = []
    keyed = False

    def note(change: RowChange) -> None:
        counts[change.kind] += 1
        if len(shown) < SHOWN:
            shown.append(change)

    for r in _pairs(store, new_step, old_step):
        keyed = True
        if r["b_key"] is None:
            note(RowChange(r["key"], "added"))
            continue
        inputs = _differing(r["b_data"], r["a_data"])
        fields = _differing(_as_fields(r["b_output"]), _as_fields(r["a_output"]))
        if inputs or fields:
            note(RowChange(r["key"], "changed", inputs, fields))
    for r in _pairs(store, old_step, new_step):
        keyed = True
        if r["b_key"] is None:
            note(RowChange(r["key"], "removed"))
    if not keyed:
        return None
    shown.sort(key=lambda c: c.key)
    return RowChanges(counts["changed"], counts["added"], counts["removed"], tuple(shown))
