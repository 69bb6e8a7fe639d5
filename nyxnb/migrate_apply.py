"""Applying and reversing a tenant migration: one transaction, set-based SQL, verified.

The ids of the rows that move are captured once into temporary tables; every later statement is a
set-based ``UPDATE``/``DELETE ... WHERE id IN (SELECT id FROM <temp table>)``.  On PostgreSQL the
moved tables are locked (SHARE ROW EXCLUSIVE: readers go on, writers wait) so the database cannot
drift between the stale-plan check and the commit; SQLite's ``BEGIN IMMEDIATE`` does the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime
from decimal import Decimal
from time import perf_counter
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Date,
    DateTime,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from .errors import MigrationError, NotFound, StalePlan, VerificationFailed
from .migrate import MigrationPlan, MoveResult, Resolution
from .migrate_plan import (
    _MOD,
    TENANT,
    Digest,
    Members,
    Schema,
    Transform,
    collisions,
    digests,
    discover_schema,
    hashed_columns,
    survey,
)
from .models import Base, new_id, utcnow
from .store import Store

_CHUNK = 500


@dataclass(frozen=True, eq=False)
class Txn:
    """One migration transaction: the connection, the schema, the plan and the moved-id tables."""

    conn: Connection
    schema: Schema
    plan: MigrationPlan
    ids: dict[str, Table]

    def moved(self, table: str, alias: Any = None) -> ColumnElement[bool]:
        """True for the rows of ``table`` listed in its id table."""
        t = self.schema.tables[table] if alias is None else alias
        return t.c.id.in_(select(self.ids[table].c.id))

    def count(self, table: Any, *where: ColumnElement[bool]) -> int:
        """``SELECT count(*) FROM table WHERE ...``."""
        return int(self.conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def apply_plan(store: Store, plan: MigrationPlan, on_conflict: str) -> MoveResult:
    """Apply ``plan``: re-check, resolve, move, verify and record, all in one transaction."""
    resolutions = plan.resolve(on_conflict)
    started = perf_counter()
    with _refusals("the move"), store.engine.begin() as conn:
        tx = _open(conn, plan)
        record = _apply(tx, resolutions)
        record["seconds"] = round(perf_counter() - started, 3)
        move_id = _record_move(tx, on_conflict, resolutions, record)
        _drop_id_tables(tx)
    return MoveResult(
        move_id=move_id,
        action="apply",
        plan=plan,
        resolutions=resolutions,
        counts=tuple(record["moved"].items()),
        detached=len(plan.references),
        seconds=perf_counter() - started,
    )


@contextmanager
def _refusals(what: str) -> Iterator[None]:
    try:
        yield
    except IntegrityError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise MigrationError(
            f"{what} was refused by the database ({reason}); nothing was changed",
            hint="plan again and review the conflicts",
        ) from None


def _open(conn: Connection, plan: MigrationPlan) -> Txn:
    """Lock, check the plan against a fresh survey, capture the ids of the rows that move."""
    schema = discover_schema(conn)
    _lock(conn, schema)
    try:
        fresh = survey(
            conn, plan.project_id, plan.source_id, plan.target_id, suffix=plan.suffix, schema=schema
        )
    except NotFound as exc:
        raise StalePlan(
            f"the plan is stale: {exc.message}", hint="nothing was written; plan again"
        ) from None
    if fresh != plan:
        raise StalePlan(_staleness(plan, fresh), hint="nothing was written; plan again and review")
    tx = Txn(conn, schema, plan, _id_tables(conn, schema))
    members = Members(schema, plan.project_id, plan.source_id)
    for name, tmp in tx.ids.items():
        conn.execute(insert(tmp).from_select(["id"], members.ids(name)))
    _analyze(tx)
    return tx


def _staleness(old: MigrationPlan, new: MigrationPlan) -> str:
    a, b = {t.table: t for t in old.tables}, {t.table: t for t in new.tables}
    parts = []
    for name in sorted(a.keys() | b.keys()):
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            parts.append(f"table {name} {'appeared' if x is None else 'disappeared'}")
        elif x.rows != y.rows:
            parts.append(f"{name} has {y.rows} rows to move, the plan says {x.rows}")
        elif x.checksum != y.checksum:
            parts.append(f"{name} rows changed")
    if old.conflicts != new.conflicts:
        parts.append(
            f"conflicts with {new.target}: {len(new.conflicts)}, plan: {len(old.conflicts)}"
        )
    if old.references != new.references:
        parts.append("cross-tenant foreign keys changed")
    if (old.project, old.source, old.target, old.suffix) != (
        new.project,
        new.source,
        new.target,
        new.suffix,
    ):
        parts.append("the project or a tenant was renamed")
    return "the database changed since the plan was made: " + "; ".join(parts)


def _lock(conn: Connection, schema: Schema) -> None:
    if conn.dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE already holds the write lock
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(n) for n in [*schema.tables, "tenant_moves"])
    conn.exec_driver_sql(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")


def _id_tables(conn: Connection, schema: Schema) -> dict[str, Table]:
    meta, out = MetaData(), {}
    for i, (name, table) in enumerate(schema.tables.items()):
        tmp = Table(
            f"nyxnb_move_{i}",
            meta,
            Column("id", table.c.id.type, primary_key=True),
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DROP",
        )
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{tmp.name}")
        tmp.create(conn)
        out[name] = tmp
    return out


def _analyze(tx: Txn) -> None:
    if tx.conn.dialect.name == "postgresql":  # temp tables have no statistics until analysed
        for tmp in tx.ids.values():
            tx.conn.exec_driver_sql(f"ANALYZE {tmp.name}")


def _drop_id_tables(tx: Txn) -> None:
    if tx.conn.dialect.name == "sqlite":  # PostgreSQL drops them on commit
        for tmp in tx.ids.values():
            tmp.drop(tx.conn)


def _update(conn: Connection, table: Table, where: Any, values: Mapping[str, Any]) -> int:
    """A set-based UPDATE that leaves ``updated_at`` alone (a move is not an edit)."""
    vals = dict(values)
    if "updated_at" in table.c:
        vals.setdefault("updated_at", table.c.updated_at)
    return int(conn.execute(update(table).where(where).values(vals)).rowcount)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _apply(tx: Txn, resolutions: Sequence[Resolution]) -> dict[str, Any]:
    """The writes of an apply, in an order that never violates a key, then verification."""
    by_action: defaultdict[str, list[Resolution]] = defaultdict(list)
    for r in resolutions:
        by_action[r.action].append(r)
    removed, removed_digest = _remove_rows(
        tx, [(r.table, r.target_id) for r in by_action["remove"]]
    )
    _set_references(tx, restore=False)
    merged, minus = _merge(tx, by_action["merge"])
    _rename(tx, by_action["rename"], tx.plan.target_id, undo=False)
    moved = _move(tx, tx.plan.target_id)
    for rec in reversed(merged):
        t = tx.schema.tables[rec["table"]]
        tx.conn.execute(delete(t).where(t.c.id == rec["row"]["id"]))
    expected = {}
    for tp in tx.plan.tables:
        less = minus.get(tp.table, Digest())
        expected[tp.table] = (tp.rows - less.rows, (int(tp.checksum, 16) - less.total) % _MOD)
    after = _verify(tx, tx.plan.target_id, expected, _inverse_transforms(tx, resolutions))
    return {
        "removed": removed,
        "removed_digest": removed_digest,
        "merged": merged,
        "moved": moved,
        "checksums_after": after,
        "moved_ids": {n: list(tx.conn.scalars(select(t.c.id))) for n, t in tx.ids.items()},
    }


def _remove_rows(
    tx: Txn, keys: Iterable[tuple[str, str]]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Delete target rows (children first); returns their content and checksum for the reverse."""
    by_table: defaultdict[str, set[str]] = defaultdict(set)
    for table, row_id in keys:
        by_table[table].add(row_id)
    rows: list[dict[str, Any]] = []
    sums: dict[str, str] = {}
    for name in reversed(list(tx.schema.tables)):
        ids = sorted(by_table.get(name, ()))
        if not ids:
            continue
        t = tx.schema.tables[name]
        found = tx.conn.execute(select(t).where(t.c.id.in_(ids)).order_by(t.c.id))
        rows += [{"table": name, "row": dump_row(t, r._mapping)} for r in found]
        sums[name] = digests(tx.conn, t, t.c.id.in_(ids), everything=True)[0].hex
        tx.conn.execute(delete(t).where(t.c.id.in_(ids)))
    return rows, sums


def _set_references(tx: Txn, *, restore: bool) -> None:
    """Detach the plan's cross-tenant foreign keys (set NULL), or restore them."""
    groups: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
    for ref in tx.plan.references:
        t = tx.schema.live[ref.table]
        if restore:
            _update(tx.conn, t, t.c.id == ref.row_id, {ref.column: ref.value})
        else:
            groups[(ref.table, ref.column)].append(ref.row_id)
    for (table, column), row_ids in groups.items():
        t = tx.schema.live[table]
        for part in _chunks(row_ids):
            _update(tx.conn, t, t.c.id.in_(part), {column: None})


def _merge(tx: Txn, merges: Sequence[Resolution]) -> tuple[list[dict[str, Any]], dict[str, Digest]]:
    """Re-point the children of merged rows at the target rows; take merged rows off the move."""
    merged: list[dict[str, Any]] = []
    minus: defaultdict[str, Digest] = defaultdict(Digest)
    for r in merges:  # read every merged row before any of them is re-pointed
        t = tx.schema.tables[r.table]
        row = tx.conn.execute(select(t).where(t.c.id == r.source_id)).one()
        merged.append({"table": r.table, "row": dump_row(t, row._mapping), "into": r.target_id})
        minus[r.table].add(row._mapping[c.name] for c in hashed_columns(t))
    for r in merges:
        for e in tx.schema.children(r.table):
            c = tx.schema.tables[e.child]
            where = and_(c.c[e.column] == r.source_id, tx.moved(e.child))
            _update(tx.conn, c, where, {e.column: r.target_id})
        tmp = tx.ids[r.table]
        tx.conn.execute(delete(tmp).where(tmp.c.id == r.source_id))
    return merged, minus


def _move(tx: Txn, tenant_id: str) -> dict[str, int]:
    """Set ``tenant_id`` on every listed row, one statement per table."""
    return {
        name: _update(tx.conn, t, tx.moved(name), {TENANT: tenant_id})
        for name, t in tx.schema.tables.items()
    }


def _inverse_transforms(tx: Txn, resolutions: Sequence[Resolution]) -> dict[str, Transform]:
    """Per table, how to turn a moved row back into its planned content (for the checksum)."""
    fixes: defaultdict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    repoint: defaultdict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    conflicts = {(c.table, c.source_id): c for c in tx.plan.conflicts}
    for r in resolutions:
        if r.action == "rename":
            c = conflicts[(r.table, r.source_id)]
            old = c.key[c.columns.index(str(r.column))]
            fixes[r.table].setdefault(r.source_id, {})[str(r.column)] = old
        elif r.action == "merge":
            for e in tx.schema.children(r.table):
                repoint[e.child].setdefault(e.column, {})[r.target_id] = r.source_id
    for ref in tx.plan.references:
        if ref.moved:
            fixes[ref.table].setdefault(ref.row_id, {})[ref.column] = ref.value
    return {
        name: _transform(fixes.get(name, {}), repoint.get(name, {}))
        for name in fixes.keys() | repoint.keys()
    }


def _transform(fix: dict[str, dict[str, Any]], repoint: dict[str, dict[str, str]]) -> Transform:
    def undo(row: dict[str, Any]) -> dict[str, Any]:
        row.update(fix.get(str(row["id"]), {}))
        for column, back in repoint.items():
            if row.get(column) in back:
                row[column] = back[row[column]]
        return row

    return undo


def _verify(
    tx: Txn,
    tenant_id: str,
    expected: Mapping[str, tuple[int, int]],
    transforms: Mapping[str, Transform],
) -> dict[str, str]:
    """Counts and checksums of the moved rows, nothing left behind, no dangling keys."""
    problems: list[str] = []
    after: dict[str, str] = {}
    for name, t in tx.schema.tables.items():
        fns = [None, transforms[name]] if name in transforms else [None]
        digs = digests(tx.conn, t, tx.moved(name), fns)
        after[name] = digs[0].hex
        rows, total = expected.get(name, (0, 0))
        here = tx.count(t, tx.moved(name), t.c[TENANT] == tenant_id)
        if here != rows or digs[0].rows != rows:
            problems.append(f"{name}: {here} of {rows} rows under the new tenant")
        elif digs[-1].total != total:
            problems.append(f"{name}: the checksum of the moved rows differs from the plan")
    problems += _dangling(tx)
    if problems:
        raise VerificationFailed(
            "verification failed, everything was rolled back: " + "; ".join(problems),
            hint="nothing was changed; check for triggers or concurrent writers, then retry",
        )
    return after


def _dangling(tx: Txn) -> list[str]:
    """Foreign keys from or to moved rows that cross tenants or point at nothing."""
    problems = []
    for e in (*tx.schema.edges, *tx.schema.outside):
        c, p = tx.schema.live[e.child].alias("c"), tx.schema.live[e.parent].alias("p")
        joined = c.join(p, c.c[e.column] == p.c.id)
        across = and_(p.c[TENANT].is_not(None), c.c[TENANT] != p.c[TENANT])
        n = tx.count(joined, tx.moved(e.child, c), across)
        if e.parent in tx.ids:
            n += tx.count(joined, tx.moved(e.parent, p), across)
        if n:
            problems.append(f"{n} {e.child}.{e.column} keys cross tenants")
        q = tx.schema.live[e.parent].alias("q")
        exists = select(q.c.id).where(q.c.id == c.c[e.column]).exists()
        missing = tx.count(c, tx.moved(e.child, c), c.c[e.column].is_not(None), ~exists)
        if missing:
            problems.append(f"{missing} {e.child}.{e.column} keys point at no row")
    return problems


def _row_digest(tx: Txn, records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Checksum (all columns) of recorded rows, read back from the database by id."""
    by_table: defaultdict[str, list[str]] = defaultdict(list)
    for rec in records:
        by_table[rec["table"]].append(rec["row"]["id"])
    out = {}
    for name, ids in by_table.items():
        t = tx.schema.live[name]
        out[name] = digests(tx.conn, t, t.c.id.in_(ids), everything=True)[0].hex
    return out


def _record_move(
    tx: Txn, on_conflict: str, resolutions: Sequence[Resolution], record: dict[str, Any]
) -> str:
    move_id = new_id()
    plan = tx.plan
    tm = Base.metadata.tables["tenant_moves"]
    body = {
        "plan": plan.to_dict(),
        "on_conflict": on_conflict,
        "resolutions": [asdict(r) for r in resolutions],
        **{k: record[k] for k in ("removed", "removed_digest", "merged", "moved_ids")},
    }
    counts = {
        "planned": plan.counts,
        "moved": record["moved"],
        "removed": len(record["removed"]),
        "merged": len(record["merged"]),
        "detached": len(plan.references),
        "checksums_after": record["checksums_after"],
        "seconds": record["seconds"],
    }
    tx.conn.execute(
        insert(tm).values(
            id=move_id,
            project_id=plan.project_id,
            source_tenant_id=plan.source_id,
            target_tenant_id=plan.target_id,
            plan=body,
            counts=counts,
            applied_at=utcnow(),
        )
    )
    return move_id


def reverse_move(store: Store, move_id: str) -> MoveResult:
    """Undo an applied move in one transaction; refuses if the moved rows changed since."""
    started = perf_counter()
    with _refusals("the reverse"), store.engine.begin() as conn:
        move = _load_move(conn, move_id)
        body, counts = move.plan, dict(move.counts)
        plan = MigrationPlan.from_dict(body["plan"])
        schema = discover_schema(conn)
        _lock(conn, schema)
        tx = Txn(conn, schema, plan, _id_tables(conn, schema))
        _load_ids(tx, body["moved_ids"])
        _check_reversible(tx, move_id, counts.get("checksums_after", {}))
        _unmerge(tx, body["merged"])
        resolutions = tuple(Resolution(**r) for r in body["resolutions"])
        renames = [r for r in resolutions if r.action == "rename"]
        _rename(tx, renames, plan.source_id, undo=True)
        moved = _move(tx, plan.source_id)
        _set_references(tx, restore=True)
        _insert_rows(tx, list(reversed(body["removed"])))
        expected = {t.table: (t.rows, int(t.checksum, 16)) for t in plan.tables}
        _verify(tx, plan.source_id, expected, {})
        if _row_digest(tx, body["removed"]) != body["removed_digest"]:
            raise VerificationFailed("the restored target rows differ from the removed ones")
        counts["reversed"] = {"moved": moved, "seconds": round(perf_counter() - started, 3)}
        tm = Base.metadata.tables["tenant_moves"]
        done = update(tm).where(tm.c.id == move_id).values(reversed_at=utcnow(), counts=counts)
        conn.execute(done)
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
            tx.conn.execute(insert(tx.ids[name]), [{"id": i} for i in ids])
    _analyze(tx)


def _check_reversible(tx: Txn, move_id: str, after: Mapping[str, str]) -> None:
    """Refuse (:class:`StalePlan`) when the moved rows changed or gained dependents since."""
    target = tx.plan.target_id
    problems = []
    for name, t in tx.schema.tables.items():
        listed = tx.count(tx.ids[name])
        here = tx.count(t, tx.moved(name), t.c[TENANT] == target)
        if here != listed:
            problems.append(f"{listed - here} {name} rows are gone or changed tenant")
        elif name in after and digests(tx.conn, t, tx.moved(name))[0].hex != after[name]:
            problems.append(f"{name} rows were edited")
    for e in tx.schema.edges:
        c = tx.schema.tables[e.child]
        staying = and_(~tx.moved(e.child), c.c[TENANT] == target)
        n = tx.count(c, staying, c.c[e.column].in_(select(tx.ids[e.parent].c.id)))
        if n:
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
            where = and_(c.c[e.column] == into, tx.moved(e.child))
            _update(tx.conn, c, where, {e.column: row_id})


def _rename(tx: Txn, renames: Sequence[Resolution], tenant_id: str, *, undo: bool) -> None:
    """Rename (or name back) rows together with their tenant, so no key clashes in between."""
    conflicts = {(c.table, c.source_id): c for c in tx.plan.conflicts}
    for r in renames:
        c = conflicts[(r.table, r.source_id)]
        value = c.key[c.columns.index(str(r.column))] if undo else r.new_value
        t = tx.schema.tables[r.table]
        _update(tx.conn, t, t.c.id == r.source_id, {str(r.column): value, TENANT: tenant_id})


def _insert_rows(tx: Txn, records: Sequence[Mapping[str, Any]]) -> None:
    for rec in records:
        t = tx.schema.live[rec["table"]]
        tx.conn.execute(insert(t).values(load_row(t, rec["row"])))


def dump_row(table: Table, row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row as JSON-ready values (dates as ISO text, decimals as text, bytes as hex)."""
    out: dict[str, Any] = {}
    for col in table.c:
        value = row[col.name]
        if isinstance(value, datetime | date):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, bytes | memoryview):
            value = bytes(value).hex()
        out[col.name] = value
    return out


def load_row(table: Table, data: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`dump_row`, by column type."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        kind = table.c[name].type
        if value is not None and isinstance(kind, DateTime):
            value = datetime.fromisoformat(value)
        elif value is not None and isinstance(kind, Date):
            value = date.fromisoformat(value)
        elif isinstance(value, str) and isinstance(kind, Numeric):
            value = Decimal(value)
        elif value is not None and isinstance(kind, LargeBinary):
            value = bytes.fromhex(value)
        out[name] = value
    return out
