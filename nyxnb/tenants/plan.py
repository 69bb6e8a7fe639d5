"""Planning a tenant migration: row membership, conflicts, cross-tenant references, the plan.

Nothing here writes. The same survey runs twice: once for
:func:`nyxnb.tenants.migrate.plan_migration` and once inside the apply transaction, where a plan
that no longer equals the fresh survey is refused as stale. Schema discovery is in
:mod:`nyxnb.tenants.schema`, checksums in :mod:`nyxnb.tenants.checksums`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Select, Table, and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from nyxnb.errors import ConfigError, NotFound
from nyxnb.store.models import Base, utcnow
from nyxnb.tenants.checksums import digests, utc
from nyxnb.tenants.schema import TENANT, Schema, discover_schema, tenant_keys
from nyxnb.tenants.values import ROOT, Conflict, MigrationPlan, Reference, TablePlan, canon


class Members:
    """Which rows move: found by a foreign-key walk from the project, or listed in id tables."""

    def __init__(
        self,
        schema: Schema,
        root_id: str,
        tenant_id: str,
        id_tables: Mapping[str, Table] | None = None,
    ) -> None:
        self.schema, self.root_id, self.tenant_id = schema, root_id, tenant_id
        self.id_tables = id_tables

    def cond(self, table: str, alias: Any = None) -> ColumnElement[bool]:
        """True for the moved rows of ``table`` (or of ``alias``, an alias of it)."""
        t = self.schema.tables[table] if alias is None else alias
        if self.id_tables is not None:
            return t.c.id.in_(select(self.id_tables[table].c.id))
        if table == ROOT:
            return and_(t.c.id == self.root_id, t.c[TENANT] == self.tenant_id)
        links = [
            and_(t.c[e.column].is_not(None), t.c[e.column].in_(self.ids(e.parent)))
            for e in self.schema.parents(table)
        ]
        return and_(or_(*links), t.c[TENANT] == self.tenant_id)

    def excludes(self, table: str, alias: Any, key: Any = None) -> ColumnElement[bool]:
        """True for rows of ``table`` (as ``alias``) that stay; ``key`` equals their id.

        With id tables this is an anti-join on ``key``, which SQLite can test before joining.
        """
        if self.id_tables is None:
            return sa.not_(self.cond(table, alias))
        tmp = self.id_tables[table]
        probe = alias.c.id if key is None else key
        return ~select(tmp.c.id).where(tmp.c.id == probe).exists()

    def ids(self, table: str) -> Select[Any]:
        """``SELECT id`` of the moved rows of ``table``."""
        t = self.schema.tables[table]
        return select(t.c.id).where(self.cond(table)).correlate(None)


def find_tenant(conn: Connection, key: str) -> tuple[str, str]:
    """(id, slug) of the tenant with this slug or id, or :class:`NotFound`."""
    t = Base.metadata.tables["tenants"]
    row = conn.execute(select(t.c.id, t.c.slug).where(or_(t.c.slug == key, t.c.id == key))).first()
    if row is None:
        raise NotFound("tenant", key, hint="list tenants with `nyxnb tenant list`")
    return str(row.id), str(row.slug)


def find_project(conn: Connection, key: str, tenant_id: str, slug: str) -> tuple[str, str]:
    """(id, name) of the tenant's project with this name or id, or :class:`NotFound`."""
    p = Base.metadata.tables[ROOT]
    rows = conn.execute(
        select(p.c.id, p.c.name).where(
            p.c.tenant_id == tenant_id, or_(p.c.id == key, p.c.name == key)
        )
    ).all()
    if not rows:
        hint = f"tenant {slug} has no such project; see `nyxnb project list --tenant {slug}`"
        raise NotFound("project", key, hint=hint)
    row = next((r for r in rows if r.id == key), rows[0])
    return str(row.id), str(row.name)


def survey(
    conn: Connection,
    project: str,
    source: str,
    target: str,
    *,
    suffix: str | None = None,
    schema: Schema | None = None,
) -> MigrationPlan:
    """Build the plan of moving ``project`` from ``source`` to ``target`` on ``conn``."""
    src_id, src = find_tenant(conn, source)
    tgt_id, tgt = find_tenant(conn, target)
    if src_id == tgt_id:
        raise ConfigError(f"source and target tenant are both {src!r}", hint="pick another --to")
    schema = schema or discover_schema(conn)
    pid, pname = find_project(conn, project, src_id, src)
    members = Members(schema, pid, src_id)
    suffix = f"-{src}" if suffix is None else suffix
    parts = [(table, members.cond(name)) for name, table in schema.tables.items()]
    found = zip(schema.tables, digests(conn, parts), strict=True)
    tables = [TablePlan(name, dig.rows, dig.hex) for name, dig in found]
    return MigrationPlan(
        project_id=pid,
        project=pname,
        source_id=src_id,
        source=src,
        target_id=tgt_id,
        target=tgt,
        suffix=suffix,
        tables=tuple(tables),
        conflicts=find_conflicts(conn, schema, members, tgt_id, suffix),
        references=find_references(conn, schema, members, src_id),
        planned_at=utcnow().isoformat(timespec="seconds"),
    )


@dataclass(frozen=True)
class Clash:
    """A moved row whose tenant-scoped unique key is taken in another tenant (raw values)."""

    table: str
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    source_id: str
    target_id: str
    parents: tuple[tuple[str, str, str | None, str | None], ...]


def collisions(conn: Connection, schema: Schema, members: Members, tenant_id: str) -> list[Clash]:
    """Moved rows whose tenant-scoped unique key is already taken in ``tenant_id``."""
    out: list[Clash] = []
    for name, t in schema.tables.items():
        parents = schema.parents(name)
        for cols in tenant_keys(t):
            m, g = t.alias("m"), t.alias("g")
            same = [g.c[c] == m.c[c] for c in cols]
            on = and_(g.c[TENANT] == tenant_id, g.c.id != m.c.id, *same)
            picks = [m.c.id, g.c.id, *(m.c[c] for c in cols)]
            picks += [m.c[e.column] for e in parents] + [g.c[e.column] for e in parents]
            query = select(*picks).select_from(m.join(g, on)).where(members.cond(name, m))
            n = len(cols)
            for row in conn.execute(query.order_by(m.c.id)):
                mine, theirs = row[2 + n : 2 + n + len(parents)], row[2 + n + len(parents) :]
                links = tuple(
                    (e.column, e.parent, _opt(a), _opt(b))
                    for e, a, b in zip(parents, mine, theirs, strict=True)
                )
                out.append(
                    Clash(name, cols, tuple(row[2 : 2 + n]), str(row[0]), str(row[1]), links)
                )
    return out


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def find_conflicts(
    conn: Connection, schema: Schema, members: Members, target_id: str, suffix: str
) -> tuple[Conflict, ...]:
    """Every clash with the target tenant, classified: removable (empty) or needing a policy."""
    clashes = collisions(conn, schema, members, target_id)
    targets = {(c.table, c.target_id) for c in clashes}
    blocked, links = _dependents(conn, schema, targets)
    removable = _removable(targets, blocked, links)
    out = []
    for c in clashes:
        key = (c.table, c.target_id)
        column, new = _rename_to(conn, schema, members, c, target_id, suffix)
        out.append(
            Conflict(
                table=c.table,
                columns=c.columns,
                key=tuple(canon(v) for v in c.values),
                source_id=c.source_id,
                target_id=c.target_id,
                dependents=blocked[key] + len(links[key]),
                removable=key in removable,
                container=bool(schema.children(c.table)),
                rename_column=column,
                rename_to=new,
                parents=c.parents,
            )
        )
    return tuple(out)


def _dependents(
    conn: Connection, schema: Schema, targets: set[tuple[str, str]]
) -> tuple[Counter[tuple[str, str]], defaultdict[tuple[str, str], set[tuple[str, str]]]]:
    """Rows referencing each target row: a count of ordinary ones, and the clashing ones."""
    by_table: defaultdict[str, set[str]] = defaultdict(set)
    for table, row_id in targets:
        by_table[table].add(row_id)
    counts: Counter[tuple[str, str]] = Counter()
    links: defaultdict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for e in schema.referrers:
        ids = by_table.get(e.parent)
        if not ids:
            continue
        child = schema.live[e.child]
        col, own = child.c[e.column], by_table.get(e.child, set())
        query = select(col, func.count()).where(col.in_(ids), child.c.id.not_in(own))
        for value, n in conn.execute(query.group_by(col)):
            counts[(e.parent, value)] += n
        if own:
            pairs = select(child.c.id, col).where(col.in_(ids), child.c.id.in_(own))
            for row_id, value in conn.execute(pairs):
                links[(e.parent, value)].add((e.child, row_id))
    return counts, links


def _removable(
    targets: set[tuple[str, str]],
    blocked: Counter[tuple[str, str]],
    links: Mapping[tuple[str, str], set[tuple[str, str]]],
) -> set[tuple[str, str]]:
    """Target rows whose every dependent is itself a removable clashing row (a fixpoint)."""
    ok = {k for k in targets if not blocked[k]}
    while True:
        bad = {k for k in ok if any(child not in ok for child in links.get(k, ()))}
        if not bad:
            return ok
        ok -= bad


def _rename_to(
    conn: Connection, schema: Schema, members: Members, c: Clash, target_id: str, suffix: str
) -> tuple[str | None, str | None]:
    t = schema.tables[c.table]
    text_cols = [col for col in c.columns if isinstance(t.c[col].type, sa.String)]
    if not text_cols:
        return None, None
    column = text_cols[-1]
    values = dict(zip(c.columns, c.values, strict=True))
    new = f"{values[column]}{suffix}"
    limit = getattr(t.c[column].type, "length", None)
    if not suffix or (limit and len(new) > limit):
        return column, None
    same = [t.c[col] == (new if col == column else values[col]) for col in c.columns]
    mine_or_theirs = or_(t.c[TENANT] == target_id, members.cond(c.table))
    taken = conn.scalar(select(func.count()).select_from(t).where(mine_or_theirs, *same))
    return column, None if taken else new


def find_references(
    conn: Connection, schema: Schema, members: Members, source_id: str
) -> tuple[Reference, ...]:
    """Foreign keys between moved rows and staying rows of the source tenant (one query)."""
    edges = [*schema.edges, *schema.outside]
    queries = []
    for k, e in enumerate(edges):
        c, p = schema.live[e.child].alias(f"c{k}"), schema.live[e.parent].alias(f"p{k}")
        joined = c.join(p, c.c[e.column] == p.c.id)
        base = [c.c.id.label("row_id"), c.c[e.column].label("value")]
        out = select(sa.literal(k).label("k"), sa.literal(1).label("moved"), *base)
        out = out.select_from(joined).where(members.cond(e.child, c), p.c[TENANT] == source_id)
        if e.parent in schema.tables:
            out = out.where(members.excludes(e.parent, p, c.c[e.column]))
        queries.append(out)
        if e.child == e.parent:  # only a self-reference can point into the moved rows
            staying = and_(c.c[TENANT] == source_id, members.excludes(e.child, c))
            into = select(sa.literal(k), sa.literal(0), *base).select_from(joined)
            queries.append(into.where(staying, members.cond(e.parent, p)))
    if not queries:
        return ()
    found = conn.execute(sa.union_all(*queries).order_by("k", "moved", "row_id"))
    return tuple(
        Reference(edges[k].child, edges[k].column, str(i), str(v), bool(m), edges[k].nullable)
        for k, m, i, v in found
    )


@contextmanager
def read_snapshot(engine: sa.Engine) -> Iterator[Connection]:
    """A read-only, consistent view (REPEATABLE READ on PostgreSQL); always rolled back."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        trans = conn.begin()
        try:
            utc(conn)
            yield conn
        finally:
            trans.rollback()
