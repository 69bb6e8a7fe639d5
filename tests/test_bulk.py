"""The hot path's executemany writes exactly what ``conn.execute(statement, rows)`` writes.

``nyxnb.store.bulk`` skips SQLAlchemy's per-row parameter building; these tests write the same
rows both ways, on every backend, and compare what the database holds: timestamps (a bind
processor on SQLite), JSON, a column's Python default the rows leave out, a value written into
the statement itself, and an update by bound keys.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, insert, select, update

from nyxnb.engine.durable.records import ITEMS
from nyxnb.store.bulk import executemany
from nyxnb.store.models import new_id
from tests.helpers import claimed_fan_out_step

_INSERT = insert(ITEMS)
_RESET = (
    update(ITEMS)
    .where(ITEMS.c.step_id == bindparam("b_step"), ITEMS.c.idx == bindparam("b_idx"))
    .values(heading=bindparam("heading"), status="pending", output=None)
)


def _rows(step, first_idx: int, when: datetime) -> list[dict]:
    return [
        {
            "id": new_id(),
            "tenant_id": step.tenant_id,
            "step_id": step.id,
            "idx": first_idx + i,
            "heading": f"row {i}",
            "input": f"prompt {i}",
            "status": "completed",
            "output": f"answer {i}",
            "data": {"n": i, "tags": ["a", "b"]},
            "created_at": when + timedelta(microseconds=i),
            "updated_at": when,
        }  # claim_generation left out: its Python default (0) applies
        for i in range(3)
    ]


def _read(store, step_id: str, idxs: range) -> list[tuple]:
    """The rows' values but their ids (and ``updated_at``: the clock's, stamped by both ways)."""
    columns = [c for c in ITEMS.c if c.key not in ("id", "updated_at")]
    query = select(*columns).where(ITEMS.c.step_id == step_id, ITEMS.c.idx.in_(list(idxs)))
    with store.reading() as conn:
        rows = conn.execute(query.order_by(ITEMS.c.idx)).all()
    return [tuple(v for k, v in zip(columns, r, strict=True) if k.key != "idx") for r in rows]


def test_bulk_writes_what_sqlalchemy_writes(store, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: bulk\ndefaults: {provider: offline, fallback: []}\n"
        "steps:\n  - {name: items, type: fan-out, items: [{heading: A}], prompt: x}\n"
    )
    step = claimed_fan_out_step(store, str(spec), 1)
    when = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC)
    with store.begin() as conn:
        conn.execute(_INSERT, _rows(step, 100, when))
        executemany(conn, _INSERT, _rows(step, 200, when))
    assert _read(store, step.id, range(100, 103)) == _read(store, step.id, range(200, 203))

    resets = [{"b_step": step.id, "b_idx": i, "heading": f"again {i}"} for i in (100, 101)]
    with store.begin() as conn:
        conn.execute(_RESET, resets)
        executemany(conn, _RESET, [{**r, "b_idx": r["b_idx"] + 100} for r in resets])
    assert _read(store, step.id, range(100, 103)) == _read(store, step.id, range(200, 203))
    with store.reading() as conn:
        reset = conn.execute(
            select(ITEMS.c.heading, ITEMS.c.status, ITEMS.c.output, ITEMS.c.claim_generation).where(
                ITEMS.c.step_id == step.id, ITEMS.c.idx == 201
            )
        ).one()
    assert tuple(reset) == ("again 101", "pending", None, 0)


def test_a_row_missing_a_required_parameter_is_refused(store):
    with store.begin() as conn, pytest.raises(ValueError, match="heading"):
        executemany(conn, _RESET, [{"b_step": "s", "b_idx": 0}])
