"""Planning a tenant migration: schema discovery, row membership, checksums, conflicts.

Nothing here writes.  The same survey runs twice: once for :func:`nyxnb.migrate.plan_migration`
and once inside the apply transaction, where a plan that no longer equals the fresh survey is
refused as stale.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Select, Table, and_, case, cast, func, or_, select
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.sql.elements import ColumnElement

from .errors import ConfigError, MigrationError, NotFound
from .migrate import ROOT, Conflict, Digest, MigrationPlan, Reference, TablePlan, canon
from .models import Base, utcnow

TENANT = "tenant_id"
NOT_HASHED = frozenset({TENANT, "updated_at"})
_BATCH = 5000


@dataclass(frozen=True)
class Edge:
    """A single-column foreign key ``child.column -> parent.id``."""

    child: str
    column: str
    parent: str
    nullable: bool


@dataclass(frozen=True, eq=False)
class Schema:
    """The tenant-owned tables reachable from ``projects`` (parents first) and their keys."""

    tables: dict[str, Table]
    live: dict[str, Table]
    edges: tuple[Edge, ...]
    outside: tuple[Edge, ...]
    referrers: tuple[Edge, ...]

    def parents(self, table: str) -> list[Edge]:
        """Foreign keys from ``table`` to other moved tables (self-references left out)."""
        return [e for e in self.edges if e.child == table and e.parent != table]

    def children(self, table: str) -> list[Edge]:
        """Foreign keys from other moved tables to ``table``."""
        return [e for e in self.edges if e.parent == table and e.child != table]


def live_tables(conn: Connection) -> dict[str, Table]:
    """Every table in the database: nyxnb's own definitions, reflected ones for the rest."""
    names = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
    found = {n: t for n, t in Base.metadata.tables.items() if n in names}
    extra = sorted(names - found.keys())
    if extra:
        reflected = sa.MetaData()
        reflected.reflect(conn, only=extra)
        found.update({n: reflected.tables[n] for n in extra})
    return found


def _edges_of(table: Table) -> Iterator[Edge]:
    for fk in table.foreign_key_constraints:
        if len(fk.elements) == 1 and fk.elements[0].column.name == "id":
            el = fk.elements[0]
            yield Edge(table.name, el.parent.name, el.column.table.name, bool(el.parent.nullable))


def discover_schema(conn: Connection) -> Schema:
    """Every table with ``tenant_id`` reachable from ``projects`` through foreign keys."""
    live = live_tables(conn)
    if ROOT not in live:
        raise MigrationError("the store has no projects table", hint="open a nyxnb store")
    edges = sorted(
        (e for t in live.values() for e in _edges_of(t) if e.parent in live),
        key=lambda e: (e.child, e.column),
    )
    owned = {n for n, t in live.items() if TENANT in t.c}
    graph = _reachable(edges, owned)
    tables = {n: live[n] for n in _parents_first(graph, edges)}
    return Schema(
        tables=tables,
        live=live,
        edges=tuple(e for e in edges if e.child in graph and e.parent in graph),
        outside=tuple(e for e in edges if e.child in graph and e.parent in owned - graph),
        referrers=tuple(e for e in edges if e.parent in graph),
    )


def _reachable(edges: Sequence[Edge], owned: set[str]) -> set[str]:
    found = {ROOT}
    while True:
        new = {e.child for e in edges if e.parent in found and e.child in owned} - found
        if not new:
            return found
        found |= new


def _parents_first(graph: set[str], edges: Sequence[Edge]) -> list[str]:
    deps = {t: {e.parent for e in edges if e.child == t and e.parent in graph} - {t} for t in graph}
    order: list[str] = []
    while len(order) < len(graph):
        ready = sorted(t for t in graph if t not in order and deps[t] <= set(order))
        if not ready:
            left = sorted(graph - set(order))
            raise MigrationError(f"foreign keys form a cycle among {left}; cannot order the move")
        order += ready
    return order


def tenant_keys(table: Table) -> list[tuple[str, ...]]:
    """The tenant-scoped unique keys of ``table``, without ``tenant_id`` (``[("name",)]``)."""
    sets = [
        tuple(c.name for c in con.columns)
        for con in table.constraints
        if isinstance(con, sa.UniqueConstraint)
    ]
    sets += [tuple(c.name for c in ix.columns) for ix in table.indexes if ix.unique]
    keys = {tuple(c for c in cols if c != TENANT) for cols in sets if TENANT in cols}
    return sorted(k for k in keys if k)


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


def hashed_columns(table: Table, everything: bool = False) -> list[Any]:
    """The columns a checksum covers, by name: all but ``tenant_id``/``updated_at``."""
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
