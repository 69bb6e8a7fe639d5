"""Discovering what a tenant migration moves: the tenant-owned tables reachable from ``projects``.

Reads the live schema (nyxnb's own tables and reflected ones), finds the single-column foreign
keys between them, orders the tables parents first and lists their tenant-scoped unique keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection, Table

from nyxnb.errors import MigrationError
from nyxnb.store.models import Base
from nyxnb.tenants.values import ROOT

TENANT = "tenant_id"


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
