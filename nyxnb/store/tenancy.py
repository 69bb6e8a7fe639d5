"""Tenant scoping: a session with ``tenant_id`` set sees and writes only that tenant's rows.

Reads (selects, joins, lazy and eager loads) get a ``tenant_id`` criterion on every tenant-owned
entity; personas add the global ones (``tenant_id`` NULL), which are read-only there.  Writes are
checked: new objects and bulk inserts are stamped with the session's tenant (another tenant's id
is refused), ORM updates and deletes touch only the tenant's rows, and a bulk update by primary
key naming another tenant's row fails with :class:`NotFound` -- exactly as for a missing id.
An update may not set another tenant's ``tenant_id``, a new or changed row may not point at
another tenant's parent (a foreign key), and Core ``select(table)`` statements get the same
``tenant_id`` criterion as ORM ones.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from sqlalchemy import Join, Select, Table, event, inspect, select
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql import ClauseElement

from nyxnb.errors import ConfigError, NotFound
from nyxnb.store import models

T = TypeVar("T")


class NyxSession(Session):
    """A session; when ``tenant_id`` is set every ORM query sees only that tenant's rows."""

    tenant_id: str | None = None

    def get_one(self, entity: type[T], ident: Any, **kw: Any) -> T:  # type: ignore[override]
        """Fetch by primary key or raise :class:`NotFound` (also for another tenant's row)."""
        obj = self.get(entity, ident, **kw)
        if obj is None:
            kind = re.sub(r"(?<!^)(?=[A-Z])", " ", entity.__name__).lower()  # WorkflowStep ->
            raise NotFound(
                kind,
                ident,
                hint=f"check the {kind} id (ids are UUIDs; `nyxnb list` shows workflows)",
            )
        return obj


def _tenant_criteria(tenant_id: str) -> Any:
    return with_loader_criteria(
        models.TenantOwned,
        lambda cls: cls.tenant_id == tenant_id,
        include_aliases=True,
        track_closure_variables=True,
    )


def _persona_criteria(tenant_id: str, *, shared: bool) -> Any:
    if shared:  # reads also see the global personas
        return with_loader_criteria(
            models.Persona,
            lambda cls: (cls.tenant_id == tenant_id) | (cls.tenant_id.is_(None)),
            include_aliases=True,
            track_closure_variables=True,
        )
    return with_loader_criteria(
        models.Persona,
        lambda cls: cls.tenant_id == tenant_id,
        include_aliases=True,
        track_closure_variables=True,
    )


def _owned_mapper(state: ORMExecuteState) -> Any:
    mapper = state.bind_mapper
    if mapper is None or "tenant_id" not in mapper.columns or mapper.class_ is models.TenantMove:
        return None
    return mapper


def _rows(state: ORMExecuteState) -> list[dict[str, Any]]:
    params = state.parameters
    if isinstance(params, list):
        return [dict(p) for p in params]
    return [dict(params)] if isinstance(params, dict) and params else []


def _check_bulk_rows(state: ORMExecuteState, tenant_id: str) -> list[dict[str, Any]]:
    """Refuse rows naming another tenant, or (bulk update) another tenant's primary key."""
    mapper = _owned_mapper(state)
    rows = _rows(state) if mapper is not None else []
    for row in rows:
        if row.get("tenant_id", tenant_id) != tenant_id:
            raise NotFound("tenant", row["tenant_id"], hint="write rows in your own tenant")
    if state.is_update and rows:
        table = mapper.local_table
        ids = [row["id"] for row in rows if "id" in row]
        query = select(table.c.id).where(table.c.id.in_(ids), table.c.tenant_id == tenant_id)
        found = set(state.session.execute(query).scalars())
        for missing in ids:
            if missing not in found:
                raise NotFound(table.name, missing)
    return rows


def _core_tables(statement: Select[Any]) -> list[Table]:
    """The tenant-owned Core tables a select reads from directly (joins included)."""
    found: list[Table] = []
    stack = list(statement.get_final_froms())
    while stack:
        item = stack.pop()
        if isinstance(item, Join):
            stack += [item.left, item.right]
        elif isinstance(item, Table) and "tenant_id" in item.c and item.name != "tenant_moves":
            found.append(item)
    return found


def _scope_core_select(state: ORMExecuteState, tenant_id: str) -> None:
    statement = state.statement
    if not isinstance(statement, Select):
        return
    for table in _core_tables(statement):
        own = table.c.tenant_id == tenant_id
        if table.name == "personas":  # global personas are readable everywhere
            own = own | table.c.tenant_id.is_(None)
        statement = statement.where(own)
    state.statement = statement


def _check_updated_tenant(state: ORMExecuteState, tenant_id: str) -> None:
    statement = state.statement
    if not isinstance(statement, ClauseElement):
        return
    params = statement.compile().params
    if params.get("tenant_id", tenant_id) not in (tenant_id, None):
        raise NotFound("tenant", params["tenant_id"], hint="write rows in your own tenant")


@event.listens_for(NyxSession, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> Any:
    tenant_id = getattr(state.session, "tenant_id", None)
    if tenant_id is None or state.is_column_load:
        return None
    if state.is_select:
        _scope_core_select(state, tenant_id)
    if state.is_update and not state.is_executemany:
        _check_updated_tenant(state, tenant_id)
    if state.is_insert or (state.is_update and state.is_executemany):
        rows = _check_bulk_rows(state, tenant_id)
        if state.is_insert and rows and any("tenant_id" not in r for r in rows):
            return state.invoke_statement(params=[{**r, "tenant_id": tenant_id} for r in rows])
        return None
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(
            _tenant_criteria(tenant_id), _persona_criteria(tenant_id, shared=state.is_select)
        )
    return None


@event.listens_for(NyxSession, "before_flush")
def _stamp_tenant(session: Session, _ctx: Any, _instances: Any) -> None:
    tenant_id = getattr(session, "tenant_id", None)
    if tenant_id is None:
        return
    for obj in session.new:
        if isinstance(obj, (models.TenantOwned, models.Persona)):
            if getattr(obj, "tenant_id", None) in (None, tenant_id):
                obj.tenant_id = tenant_id  # type: ignore[misc]
            else:
                raise NotFound("tenant", obj.tenant_id, hint="write rows in your own tenant")
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, models.TenantOwned) and obj.tenant_id != tenant_id:
            raise NotFound("tenant", obj.tenant_id, hint="write rows in your own tenant")
        if isinstance(obj, models.TenantOwned):
            _check_parents(session, obj, tenant_id)
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, models.Persona) and obj.tenant_id is None:
            raise ConfigError(
                f"persona {obj.name!r} is global and read-only in a tenant session",
                hint="add a persona of the same name to your tenant to override it",
            )


def _check_parents(session: Session, obj: Any, tenant_id: str) -> None:
    """Refuse a row that points (by foreign key) at another tenant's parent row."""
    table = inspect(obj).mapper.local_table
    for column in table.c:
        value = getattr(obj, column.key, None)
        if value is None or column.name == "tenant_id":
            continue
        for fk in column.foreign_keys:
            parent = fk.column.table
            if "tenant_id" not in parent.c or parent.name == "personas":
                continue
            # on the connection: unscoped, so another tenant's parent is seen (and refused)
            owner = (
                session.connection()
                .execute(select(parent.c.tenant_id).where(fk.column == value))
                .scalar()
            )
            if owner is not None and owner != tenant_id:
                raise NotFound(parent.name, value, hint="attach rows to your own tenant's rows")
