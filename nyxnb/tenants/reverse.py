"""Reversing an applied tenant migration: the recorded move undone in one verified transaction.

The ids recorded by the apply are loaded back into temporary id tables; the reverse refuses when
the moved rows changed since, then undoes merges, renames, the move itself and the detached
references, restores removed target rows and verifies like the apply (:mod:`nyxnb.tenants.apply`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Table, and_, func, insert, select

from nyxnb.errors import MigrationError, NotFound, StalePlan, VerificationFailed
from nyxnb.store.database import Store
from nyxnb.store.models import Base, utcnow
from nyxnb.tenants.apply import (
    Txn,
    _analyze,
    _drop_id_tables,
    _id_tables,
    _lock,
    _move,
    _outsiders,
    _refusals,
    _rename,
    _scan,
    _set_references,
    _verify,
)
from nyxnb.tenants.checksums import digest, utc
from nyxnb.tenants.plan import Members, collisions
from nyxnb.tenants.schema import TENANT, discover_schema
from nyxnb.tenants.values import MigrationPlan, MoveResult, Resolution, load_row


def reverse_move(store: Store, move_id: str) -> MoveResult:
    """Undo an applied move in one transaction; refuses if the moved rows changed since."""
    started = perf_counter()
    with _refusals("the reverse"), store.engine.begin() as conn:
        move = _load_move(conn, move_id)
        body, counts = move.plan, dict(move.counts)
        plan = MigrationPlan.from_dict(body["plan"])
        utc(conn)
        schema = discover_schema(conn)
        _lock(conn, schema)
        tx = Txn(conn, schema, plan, _id_tables(conn, schema))
        _load_ids(tx, body["moved_ids"])
        _check_reversible(tx, move_id, counts.get("checksums_after", {}))
        _unmerge(tx, body["merged"])
        resolutions = tuple(Resolution(**r) for r in body["resolutions"])
        _rename(tx, [r for r in resolutions if r.action == "rename"], plan.source_id, undo=True)
        moved = _move(tx, plan.source_id)
        _set_references(tx, restore=True)
        _insert_rows(tx, list(reversed(body["removed"])))
        expected = {t.table: (t.rows, int(t.checksum, 16)) for t in plan.tables}
        _verify(tx, plan.source_id, expected, {})
        _verify_restored(tx, body["removed"], body["removed_digest"])
        counts["reversed"] = {"moved": moved, "seconds": round(perf_counter() - started, 3)}
        tm = Base.metadata.tables["tenant_moves"]
        done = sa.update(tm).where(tm.c.id == move_id)
        conn.execute(done.values(reversed_at=utcnow(), counts=counts))
        _drop_id_tables(tx)
    return MoveResult(
        move_id, "reverse", plan, resolutions, tuple(moved.items()), 0, perf_counter() - started
    )


def _load_move(conn: Connection, move_id: str) -> Any:
    tm = Base.metadata.tables["tenant_moves"]
    move = conn.execute(select(tm).where(tm.c.id == move_id).with_for_update()).first()
    if move is None:
        raise NotFound("tenant move", move_id, hint="the id is printed by `nyxnb migrate --apply`")
    if move.reversed_at is not None:
        raise MigrationError(f"move {move_id} was already reversed at {move.reversed_at}")
    if move.applied_at is None or "moved_ids" not in (move.plan or {}):
        raise MigrationError(f"move {move_id} was never applied; there is nothing to reverse")
    return move


def _load_ids(tx: Txn, moved_ids: Mapping[str, list[str]]) -> None:
    gone = sorted(set(moved_ids) - set(tx.schema.tables))
    if gone:
        raise StalePlan(f"cannot reverse: tables {gone} are no longer linked to projects")
    for name, ids in moved_ids.items():
        if ids:
            _insert_ids(tx.conn, tx.ids[name], ids)
    _analyze(tx, {name: len(ids) for name, ids in moved_ids.items()})


def _insert_ids(conn: Connection, tmp: Table, ids: Sequence[str]) -> None:
    """One statement per table: the ids travel as one sa.JSON array parameter."""
    if conn.dialect.name == "sqlite":
        rows = select(func.json_each(json.dumps(list(ids))).table_valued("value").c.value)
    else:
        payload = sa.literal(json.dumps(list(ids)), sa.Text)
        rows = select(func.json_array_elements_text(sa.cast(payload, sa.JSON)))
    conn.execute(insert(tmp).from_select(["id"], rows))


def _check_reversible(tx: Txn, move_id: str, after: Mapping[str, str]) -> None:
    """Refuse (:class:`StalePlan`) when the moved rows changed or gained dependents since."""
    target = tx.plan.target_id
    problems = []
    scans = {}
    for name in tx.schema.tables:
        listed = tx.count(tx.ids[name])
        now = scans[name] = _scan(tx, name, [{}], target)
        if now.in_tenant != listed:
            problems.append(f"{listed - now.in_tenant} {name} rows are gone or changed tenant")
        elif name in after and now.digests[0].hex != after[name]:
            problems.append(f"{name} rows were edited")
    for e, n in _outsiders(tx, scans, lambda c: c.c[TENANT] == target).items():
        problems.append(f"{n} new {e.child} rows reference moved {e.parent} rows")
    members = Members(tx.schema, tx.plan.project_id, target, tx.ids)
    for clash in collisions(tx.conn, tx.schema, members, tx.plan.source_id):
        problems.append(f"{clash.table} {clash.values} is taken again in {tx.plan.source}")
    if problems:
        raise StalePlan(
            f"cannot reverse move {move_id}, the data changed since: " + "; ".join(problems),
            hint="nothing was written; plan a new migration back instead",
        )


def _unmerge(tx: Txn, merged: Sequence[Mapping[str, Any]]) -> None:
    """Re-create merged-away rows and point their original children back at them."""
    _insert_rows(tx, merged)
    for rec in merged:
        row_id, into = rec["row"]["id"], rec["into"]
        tx.conn.execute(insert(tx.ids[rec["table"]]).values(id=row_id))
        for e in tx.schema.children(rec["table"]):
            c = tx.schema.tables[e.child]
            tx.update(c, and_(c.c[e.column] == into, tx.moved(e.child)), {e.column: row_id})


def _insert_rows(tx: Txn, records: Sequence[Mapping[str, Any]]) -> None:
    for rec in records:
        t = tx.schema.live[rec["table"]]
        tx.conn.execute(insert(t).values(load_row(t, rec["row"])))


def _verify_restored(
    tx: Txn, records: Sequence[Mapping[str, Any]], expected: Mapping[str, str]
) -> None:
    by_table: defaultdict[str, list[str]] = defaultdict(list)
    for rec in records:
        by_table[rec["table"]].append(rec["row"]["id"])
    for name, ids in by_table.items():
        t = tx.schema.live[name]
        if digest(tx.conn, t, t.c.id.in_(ids), everything=True).hex != expected.get(name):
            raise VerificationFailed(
                f"the restored {name} rows differ from the removed ones; nothing was changed"
            )
