"""Content checksums of table rows: order-independent digests computed the same way everywhere.

A digest sums a hash of each row's columns as text, so it does not depend on row order.
PostgreSQL hashes and sums in SQL; other databases stream the rows through :class:`Digest`.
A :func:`scan` also counts rows in a tenant and checks where watched foreign keys point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Table, case, cast, func, select
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.sql.elements import ColumnElement

from nyxnb.tenants.schema import TENANT
from nyxnb.tenants.values import Digest

#: Not content: the tenant (what a move changes), edit times and a run's lease (run state that a
#: heartbeat renews every few seconds and a move clears when it has expired).
NOT_HASHED = frozenset({TENANT, "updated_at", "lease_owner", "lease_expires_at"})
_BATCH = 5000


def hashed_columns(table: Table, everything: bool = False) -> list[Any]:
    """The columns a checksum covers, by name: all but :data:`NOT_HASHED`."""
    cols = [c for c in table.c if everything or c.name not in NOT_HASHED]
    return sorted(cols, key=lambda c: c.name)


def text_of(col: Any, dialect: str) -> ColumnElement[Any]:
    """A column as text the database renders the same way every time (see :func:`utc`)."""
    kind = col.type
    if isinstance(kind, sa.Boolean):
        return case((col.is_(None), sa.null()), (col, "1"), else_="0")
    if isinstance(kind, sa.LargeBinary):
        return func.hex(col) if dialect == "sqlite" else func.encode(col, "hex")
    return cast(col, sa.Text)


def utc(conn: Connection) -> None:
    """Render timestamps in UTC for the rest of this transaction (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")


#: column name -> text expression replacing it in one variant of a scan
Override = Mapping[str, ColumnElement[Any]]


@dataclass
class Scan:
    """One pass over some rows: digests, rows in a tenant, and where watched keys point."""

    digests: list[Digest]
    in_tenant: int = 0
    #: per watched column: how many values are ids of moved rows, and the other values
    inside: dict[str, int] = field(default_factory=dict)
    outside: dict[str, set[str]] = field(default_factory=dict)


def scan(
    conn: Connection,
    table: Table,
    where: ColumnElement[bool],
    variants: Sequence[Override] = ({},),
    *,
    everything: bool = False,
    tenant: str | None = None,
    watch: Mapping[str, Table | None] | None = None,
) -> Scan:
    """One pass over the rows matching ``where``: a digest per variant of the columns, the rows
    in ``tenant``, and for each watched key column how many values are in its id table."""
    dialect = conn.dialect.name
    base = {c.name: text_of(c, dialect) for c in hashed_columns(table, everything)}
    exprs = [[v.get(name, e) for name, e in base.items()] for v in variants]
    home = case((table.c[TENANT] == tenant, 1), else_=0) if tenant is not None else None
    if dialect == "postgresql":
        return _scan_in_sql(conn, table, where, exprs, home, watch or {})
    return _scan_in_python(conn, where, exprs, home, watch or {}, list(base))


def _scan_in_python(
    conn: Connection,
    where: ColumnElement[bool],
    exprs: list[list[ColumnElement[Any]]],
    home: ColumnElement[Any] | None,
    watch: Mapping[str, Table | None],
    names: list[str],
) -> Scan:
    width = len(names)
    picks = [e.label(f"v{i}") for i, e in enumerate(x for group in exprs for x in group)]
    found = Scan([Digest() for _ in exprs])
    watched = []
    for col, tmp in watch.items():
        ids = set(conn.scalars(select(tmp.c.id))) if tmp is not None else set()
        watched.append((names.index(col), col, ids))
        found.inside[col], found.outside[col] = 0, set()
    query = select(*picks, *([home] if home is not None else [])).where(where)
    for row in conn.execute(query.execution_options(yield_per=_BATCH)):
        for k, dig in enumerate(found.digests):
            dig.add(row[k * width : (k + 1) * width])
        if home is not None:
            found.in_tenant += row[-1]
        for i, col, ids in watched:
            if row[i] is not None:
                if row[i] in ids:
                    found.inside[col] += 1
                else:
                    found.outside[col].add(row[i])
    return found


def _scan_in_sql(
    conn: Connection,
    table: Table,
    where: ColumnElement[bool],
    exprs: list[list[ColumnElement[Any]]],
    home: ColumnElement[Any] | None,
    watch: Mapping[str, Table | None],
) -> Scan:
    """PostgreSQL hashes and sums the rows itself: nothing but the totals crosses the wire."""
    sums: list[Any] = [func.coalesce(func.sum(_pg_row_hash(group)), 0) for group in exprs]
    if home is not None:
        sums.append(func.coalesce(func.sum(home), 0))
    keys = list(watch.items())
    for col, tmp in keys:
        moved_key = table.c[col].in_(select(tmp.c.id)) if tmp is not None else sa.false()
        sums.append(func.coalesce(func.sum(case((moved_key, 1), else_=0)), 0))
        sums.append(func.count(table.c[col]))
    row = conn.execute(select(func.count(), *sums).where(where)).one()
    found = Scan([Digest() for _ in exprs])
    for k, dig in enumerate(found.digests):
        dig.rows, dig.total = int(row[0]), int(row[1 + k])
    rest = list(row[1 + len(exprs) :])
    if home is not None:
        found.in_tenant = int(rest.pop(0))
    for i, (col, tmp) in enumerate(keys):
        found.inside[col] = inside = int(rest[2 * i])
        found.outside[col] = set()
        if inside == rest[2 * i + 1]:  # every key points at a moved row
            continue
        key = table.c[col]
        loose = select(key).distinct().where(where, key.is_not(None))
        if tmp is not None:
            loose = loose.where(~select(tmp.c.id).where(tmp.c.id == key).exists())
        found.outside[col] = {str(v) for v in conn.scalars(loose)}
    return found


def _pg_row_hash(values: Sequence[ColumnElement[Any]]) -> ColumnElement[Any]:
    """The first 64 bits of the md5 of a row's text, as a bigint (summed as numeric)."""
    line = func.concat_ws(func.chr(31), *[func.coalesce(v, "\x1eN") for v in values])
    bits = cast(func.concat("x", func.substr(func.md5(line), 1, 16)), BIT(64))
    return cast(cast(bits, sa.BigInteger), sa.Numeric)


def digest(conn: Connection, table: Table, where: ColumnElement[bool], **kw: Any) -> Digest:
    """The plain digest of the rows of ``table`` matching ``where``."""
    return scan(conn, table, where, **kw).digests[0]


def digests(
    conn: Connection, parts: Sequence[tuple[Table, ColumnElement[bool]]], everything: bool = False
) -> list[Digest]:
    """:func:`digest` of several tables; one round trip on PostgreSQL."""
    if conn.dialect.name != "postgresql" or not parts:
        return [digest(conn, t, where, everything=everything) for t, where in parts]
    queries = []
    for k, (t, where) in enumerate(parts):
        row = [text_of(c, "postgresql") for c in hashed_columns(t, everything)]
        total = func.coalesce(func.sum(_pg_row_hash(row)), 0)
        queries.append(select(sa.literal(k).label("k"), func.count(), total).where(where))
    out = [Digest() for _ in parts]
    for k, rows, total in conn.execute(sa.union_all(*queries)):
        out[k].rows, out[k].total = int(rows), int(total)
    return out
