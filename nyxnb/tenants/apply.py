"""Applying a tenant migration: one transaction, set-based SQL, verified.

The ids of the rows that move are captured once into temporary tables; every later statement is a
set-based ``UPDATE``/``DELETE ... WHERE id IN (SELECT id FROM <temp table>)``.  On PostgreSQL the
moved tables are locked (SHARE ROW EXCLUSIVE: readers go on, writers wait) so the database cannot
drift between the stale-plan check and the commit; SQLite's ``BEGIN IMMEDIATE`` does the same.
Reversing a move reuses this machinery; it lives in :mod:`nyxnb.tenants.reverse`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Table, and_, delete, func, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from nyxnb.errors import MigrationError, NotFound, StalePlan, VerificationFailed
from nyxnb.store.database import Store
from nyxnb.store.models import Base, Workflow, aware, new_id, utcnow
from nyxnb.tenants.checksums import Override, Scan, digest, scan, text_of, utc
from nyxnb.tenants.plan import Members, survey
from nyxnb.tenants.schema import TENANT, Edge, Schema, discover_schema
from nyxnb.tenants.values import Digest, MigrationPlan, MoveResult, Resolution, dump_row

_CHUNK = 500


@dataclass(frozen=True, eq=False)
class Txn:
    """One migration transaction: the connection, the schema, the plan and the moved-id tables."""

    conn: Connection
    schema: Schema
    plan: MigrationPlan
    ids: dict[str, Table]

    def edges_from(self, table: str) -> list[Edge]:
        """Foreign keys of ``table`` to tenant-owned tables."""
        return [e for e in (*self.schema.edges, *self.schema.outside) if e.child == table]

    def moved(self, table: str, alias: Any = None) -> ColumnElement[bool]:
        """True for the rows of ``table`` listed in its id table."""
        t = self.schema.tables[table] if alias is None else alias
        return t.c.id.in_(select(self.ids[table].c.id))

    def staying(self, table: str, *, key: Any = None) -> ColumnElement[bool]:
        """True when ``key`` (default: the row's id) is not listed in the id table (anti-join)."""
        tmp = self.ids[table]
        probe = self.schema.tables[table].c.id if key is None else key
        return ~select(tmp.c.id).where(tmp.c.id == probe).exists()

    def count(self, table: Any, *where: ColumnElement[bool]) -> int:
        """``SELECT count(*) FROM table WHERE ...``."""
        return int(self.conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)

    def update(self, table: Table, where: Any, values: Mapping[str, Any]) -> int:
        """A set-based UPDATE that leaves ``updated_at`` alone (a move is not an edit)."""
        vals = dict(values)
        if "updated_at" in table.c:
            vals.setdefault("updated_at", table.c.updated_at)
        return int(self.conn.execute(sa.update(table).where(where).values(vals)).rowcount)


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
    """Any error the database raises (a constraint, a trigger's plpgsql RAISE) as one line."""
    try:
        yield
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise MigrationError(
            f"{what} was refused by the database ({type(exc.orig or exc).__name__}: {reason}); "
            "nothing was changed",
            hint="fix what the database reported, plan again and review the conflicts",
        ) from None


def _refuse_running(conn: Connection, plan: MigrationPlan) -> None:
    """Refuse to move a project while one of its workflows holds a live run lease.

    A live run would go on writing rows under the old tenant.  A lease past its expiry belongs
    to a run that was killed -- or only stopped (SIGSTOP, a suspended laptop) and may wake up:
    the move ends it (clears it in the move's own transaction), and since every write of a run
    re-checks its lease (fencing), a run that wakes up afterwards is refused (``LeaseLost``)
    instead of writing under the old tenant.  ``nyxnb resume`` then continues in the new one.
    """
    wf: Table = Workflow.__table__  # type: ignore[assignment]
    leased = conn.execute(
        select(wf.c.id, wf.c.name, wf.c.lease_expires_at).where(
            wf.c.project_id == plan.project_id,
            wf.c.tenant_id == plan.source_id,
            wf.c.lease_owner.is_not(None),
        )
    ).all()
    now, expired = utcnow(), []
    for held in leased:
        expires = aware(held.lease_expires_at)
        if expires is None or expires < now:
            expired.append(held.id)
            continue
        raise MigrationError(
            f"workflow {held.name!r} ({held.id}) of project {plan.project!r} is running "
            f"(it holds a run lease for {(expires - now).total_seconds():.0f} s more); "
            "nothing was changed",
            hint=f"pause it (`nyxnb pause {held.id}`) or let it finish; a killed run's lease "
            "expires within seconds, then apply again",
        )
    if expired:  # fenced off: a stopped holder that wakes up can no longer write
        conn.execute(
            sa.update(wf)
            .where(wf.c.id.in_(expired))
            .values(lease_owner=None, lease_expires_at=None)
        )


def _open(conn: Connection, plan: MigrationPlan) -> Txn:
    """Lock, capture the ids of the rows that move, and check the plan against a fresh survey."""
    utc(conn)
    schema = discover_schema(conn)
    _lock(conn, schema)
    _refuse_running(conn, plan)
    tx = Txn(conn, schema, plan, _id_tables(conn, schema))
    walk = Members(schema, plan.project_id, plan.source_id)
    sizes = {
        name: conn.execute(insert(tmp).from_select(["id"], walk.ids(name))).rowcount
        for name, tmp in tx.ids.items()
    }
    _analyze(tx, sizes)
    try:  # the walk is cheaper than the id tables for a full pass (measured on SQLite)
        ids = (plan.project_id, plan.source_id, plan.target_id)
        fresh = survey(conn, *ids, suffix=plan.suffix, schema=schema)
    except NotFound as exc:
        gone = f"project {plan.project!r} is no longer in tenant {plan.source} (moved already?)"
        why = gone if exc.kind == "project" else exc.message
        raise StalePlan(
            f"the plan is stale: {why}", hint="nothing was written; plan again"
        ) from None
    if fresh != plan:
        changes = "; ".join(plan.diff(fresh))
        raise StalePlan(
            f"the database changed since the plan was made: {changes}",
            hint="nothing was written; plan again and review",
        )
    return tx


def _lock(conn: Connection, schema: Schema) -> None:
    if conn.dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE already holds the write lock
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(n) for n in [*schema.tables, "tenant_moves"])
    conn.exec_driver_sql(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")


_TEMP = sa.MetaData()  # one Table object per name and type: statements stay cacheable


def _id_tables(conn: Connection, schema: Schema) -> dict[str, Table]:
    out = {}
    for i, (name, table) in enumerate(schema.tables.items()):
        key = f"nyxnb_move_{i}_{type(table.c.id.type).__name__.lower()}"
        tmp = _TEMP.tables.get(key)
        if tmp is None:
            tmp = Table(key, _TEMP, sa.Column("id", table.c.id.type, primary_key=True),
                        prefixes=["TEMPORARY"], postgresql_on_commit="DROP")  # fmt: skip
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{tmp.name}")
        tmp.create(conn)
        out[name] = tmp
    return out


def _analyze(tx: Txn, sizes: Mapping[str, int]) -> None:
    if tx.conn.dialect.name == "postgresql":  # temp tables have no statistics until analysed
        for name, tmp in tx.ids.items():
            if sizes.get(name, 0) > 1000:
                tx.conn.exec_driver_sql(f"ANALYZE {tmp.name}")


def _drop_id_tables(tx: Txn) -> None:
    if tx.conn.dialect.name == "sqlite":  # PostgreSQL drops them on commit
        for tmp in tx.ids.values():
            tmp.drop(tx.conn)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _apply(tx: Txn, resolutions: Sequence[Resolution]) -> dict[str, Any]:
    """The writes of an apply, in an order that never violates a key, then verification."""
    by_action: defaultdict[str, list[Resolution]] = defaultdict(list)
    for r in resolutions:
        by_action[r.action].append(r)
    removes = [(r.table, r.target_id) for r in by_action["remove"]]
    removed, removed_digest = _remove_rows(tx, removes)
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
        expected[tp.table] = (tp.rows - less.rows, (int(tp.checksum, 16) - less.total) % Digest.MOD)
    after = _verify(tx, tx.plan.target_id, expected, _inverse(tx, resolutions))
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
        sums[name] = digest(tx.conn, t, t.c.id.in_(ids), everything=True).hex
        tx.conn.execute(delete(t).where(t.c.id.in_(ids)))
    return rows, sums


def _set_references(tx: Txn, *, restore: bool) -> None:
    """Detach the plan's cross-tenant foreign keys (set NULL), or restore them."""
    groups: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
    for ref in tx.plan.references:
        t = tx.schema.live[ref.table]
        if restore:
            tx.update(t, t.c.id == ref.row_id, {ref.column: ref.value})
        else:
            groups[(ref.table, ref.column)].append(ref.row_id)
    for (table, column), row_ids in groups.items():
        t = tx.schema.live[table]
        for part in _chunks(row_ids):
            tx.update(t, t.c.id.in_(part), {column: None})


def _merge(tx: Txn, merges: Sequence[Resolution]) -> tuple[list[dict[str, Any]], dict[str, Digest]]:
    """Re-point the children of merged rows at the target rows; take merged rows off the move."""
    merged: list[dict[str, Any]] = []
    minus: dict[str, Digest] = {}
    for r in merges:  # read every merged row before any of them is re-pointed
        t = tx.schema.tables[r.table]
        row = tx.conn.execute(select(t).where(t.c.id == r.source_id)).one()
        merged.append({"table": r.table, "row": dump_row(t, row._mapping), "into": r.target_id})
        less, before = digest(tx.conn, t, t.c.id == r.source_id), minus.get(r.table, Digest())
        minus[r.table] = Digest(before.rows + less.rows, before.total + less.total)
    for r in merges:
        for e in tx.schema.children(r.table):
            c = tx.schema.tables[e.child]
            where = and_(c.c[e.column] == r.source_id, tx.moved(e.child))
            tx.update(c, where, {e.column: r.target_id})
        tmp = tx.ids[r.table]
        tx.conn.execute(delete(tmp).where(tmp.c.id == r.source_id))
    return merged, minus


def _rename(tx: Txn, renames: Sequence[Resolution], tenant_id: str, *, undo: bool) -> None:
    """Rename (or name back) rows together with their tenant, so no key clashes in between."""
    conflicts = {(c.table, c.source_id): c for c in tx.plan.conflicts}
    for r in renames:
        c = conflicts[(r.table, r.source_id)]
        value = c.key[c.columns.index(str(r.column))] if undo else r.new_value
        t = tx.schema.tables[r.table]
        tx.update(t, t.c.id == r.source_id, {str(r.column): value, TENANT: tenant_id})


def _move(tx: Txn, tenant_id: str) -> dict[str, int]:
    """Set ``tenant_id`` on every listed row, one statement per table."""
    return {
        name: tx.update(t, tx.moved(name), {TENANT: tenant_id})
        for name, t in tx.schema.tables.items()
    }


def _inverse(tx: Txn, resolutions: Sequence[Resolution]) -> dict[str, Override]:
    """Per table, column expressions that turn moved rows back into their planned content."""
    by_id: defaultdict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    by_value: defaultdict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    conflicts = {(c.table, c.source_id): c for c in tx.plan.conflicts}
    for r in resolutions:
        if r.action == "rename":
            c = conflicts[(r.table, r.source_id)]
            old = c.key[c.columns.index(str(r.column))]
            by_id[(r.table, str(r.column))].append((r.source_id, old))
        elif r.action == "merge":
            for e in tx.schema.children(r.table):
                by_value[(e.child, e.column)].append((r.target_id, r.source_id))
    for ref in tx.plan.references:
        if ref.moved:
            by_id[(ref.table, ref.column)].append((ref.row_id, ref.value))
    out: defaultdict[str, dict[str, ColumnElement[Any]]] = defaultdict(dict)
    dialect = tx.conn.dialect.name
    for table, column in by_id.keys() | by_value.keys():
        t = tx.schema.tables[table]
        now = text_of(t.c[column], dialect)
        whens = [
            (t.c.id == row_id, sa.literal(old, sa.Text)) for row_id, old in by_id[(table, column)]
        ]
        whens += [(now == new, sa.literal(old, sa.Text)) for new, old in by_value[(table, column)]]
        out[table][column] = sa.case(*whens, else_=now)
    return dict(out)


def _verify(
    tx: Txn,
    tenant_id: str,
    expected: Mapping[str, tuple[int, int]],
    inverse: Mapping[str, Override],
) -> dict[str, str]:
    """Counts and checksums of the moved rows, nothing left behind, no dangling keys."""
    problems: list[str] = []
    scans: dict[str, Scan] = {}
    for name in tx.schema.tables:
        variants = [{}, inverse[name]] if name in inverse else [{}]
        done = scans[name] = _scan(tx, name, variants, tenant_id)
        plain, final = done.digests[0], done.digests[-1]
        rows, total = expected.get(name, (0, 0))
        if done.in_tenant != rows or plain.rows != rows:
            problems.append(f"{name}: {done.in_tenant} of {rows} rows under the new tenant")
        elif final.value != total:
            problems.append(f"{name}: the checksum of the moved rows differs from the plan")
    problems += _dangling(tx, tenant_id, scans)
    if problems:
        raise VerificationFailed(
            "verification failed, everything was rolled back: " + "; ".join(problems),
            hint="nothing was changed; check for triggers or concurrent writers, then retry",
        )
    return {name: done.digests[0].hex for name, done in scans.items()}


def _scan(tx: Txn, table: str, variants: Sequence[Override], tenant_id: str) -> Scan:
    """One pass over the moved rows of ``table``, watching where its foreign keys point."""
    watch = {e.column: tx.ids.get(e.parent) for e in tx.edges_from(table)}
    t = tx.schema.tables[table]
    return scan(tx.conn, t, tx.moved(table), variants, tenant=tenant_id, watch=watch)


def _dangling(tx: Txn, tenant_id: str, scans: Mapping[str, Scan]) -> list[str]:
    """Keys from moved rows to rows outside the tenant, or to moved rows from outside it."""
    problems = []
    for e in (*tx.schema.edges, *tx.schema.outside):
        p = tx.schema.live[e.parent]
        loose = sorted(scans[e.child].outside.get(e.column, ()))
        home = sa.or_(p.c[TENANT] == tenant_id, p.c[TENANT].is_(None))
        ok = sum(tx.count(p, p.c.id.in_(part), home) for part in _chunks(loose))
        if ok != len(loose):
            problems.append(f"{len(loose) - ok} {e.child}.{e.column} keys point outside the tenant")
    for e, left in _outsiders(tx, scans, lambda c: c.c[TENANT] != tenant_id).items():
        problems.append(f"{left} {e.child} rows left behind reference moved {e.parent} rows")
    return problems


def _outsiders(
    tx: Txn, scans: Mapping[str, Scan], which: Callable[[Table], ColumnElement[bool]]
) -> dict[Edge, int]:
    """Per edge, rows that stay (and match ``which``) but reference a moved row."""
    edges = [e for e in tx.schema.edges if e.parent in tx.ids]
    refs = [_refs(tx, e) for e in edges]
    totals = tx.conn.execute(select(*[
        select(func.count()).select_from(tx.schema.live[e.child]).where(r).scalar_subquery()
        for e, r in zip(edges, refs, strict=True)
    ])).one()  # fmt: skip
    out = {}
    for e, r, total in zip(edges, refs, totals, strict=True):
        if total != scans[e.child].inside.get(e.column, 0):  # not only moved rows refer
            c = tx.schema.live[e.child]
            n = tx.count(c, r, which(c), tx.staying(e.child))
            out.update({e: n} if n else {})
    return out


def _refs(tx: Txn, e: Edge) -> ColumnElement[bool]:
    return tx.schema.live[e.child].c[e.column].in_(select(tx.ids[e.parent].c.id))


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
