"""Tenant scoping: a session with ``tenant_id`` set sees and writes only that tenant's rows.

Reads (selects, joins, lazy and eager loads) get a ``tenant_id`` criterion on every tenant-owned
entity; personas add the global ones (``tenant_id`` NULL), which are read-only there.  Writes are
checked: new objects and bulk inserts are stamped with the session's tenant (another tenant's id
is refused), ORM updates and deletes touch only the tenant's rows, and a bulk update by primary
key naming another tenant's row fails with :class:`NotFound` -- exactly as for a missing id.
An update may not set another tenant's ``tenant_id``, a new or changed row may not point at
another tenant's parent (a foreign key), and Core ``select(table)`` statements get the same
``tenant_id`` criterion as ORM ones.  The checks read the values a statement writes by column
(:func:`_written_rows`): a ``values()`` entry bound under any name is resolved from the
execution's parameters, so naming a bound parameter differently cannot slip a value past them.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from sqlalchemy import (
    Alias,
    BindParameter,
    Delete,
    Insert,
    Join,
    Select,
    Table,
    Update,
    event,
    inspect,
    select,
)
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql import ClauseElement, Executable, FromClause, visitors
from sqlalchemy.sql.base import ExecutableOption

from nyxnb.errors import ConfigError, CrossTenantWrite, NotFound
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


def _owned_table(state: ORMExecuteState) -> Table | None:
    """The tenant-owned table an insert/update/delete writes (ORM entity or Core table)."""
    mapper = state.bind_mapper
    table: Any = mapper.local_table if mapper is not None else None
    if table is None:
        table = getattr(state.statement, "table", None)
    if not isinstance(table, Table) or "tenant_id" not in table.c or table.name == "tenant_moves":
        return None
    return table


def _rows(state: ORMExecuteState) -> list[dict[str, Any]]:
    params = state.parameters
    if isinstance(params, list):
        return [dict(p) for p in params]
    return [dict(params)] if isinstance(params, dict) and params else []


class _Computed:
    """A column value computed in SQL (not a bound value): a tenant session cannot check it."""

    def __repr__(self) -> str:
        return "<computed in SQL>"


COMPUTED = _Computed()


def _statement_values(statement: Any) -> list[dict[str, Any]]:
    """What an INSERT/UPDATE statement sets itself (``values()``), one dict per VALUES row."""
    multi = getattr(statement, "_multi_values", ()) or ()
    rows = [dict(r) for group in multi for r in group]
    own = dict(
        getattr(statement, "_ordered_values", None) or getattr(statement, "_values", None) or {}
    )
    if own or not rows:
        rows.append(own)
    return [{str(getattr(k, "name", k)): v for k, v in row.items()} for row in rows]


def _resolve(value: Any, params: dict[str, Any]) -> Any:
    """The value a ``values()`` entry writes: a bound parameter's (by its own name), a literal's."""
    if isinstance(value, BindParameter):
        if value.key in params:
            return params[value.key]
        return value.callable() if value.callable is not None else value.value
    return COMPUTED if isinstance(value, ClauseElement) else value


def _written_rows(state: ORMExecuteState, table: Table) -> list[dict[str, Any]]:
    """The column values each row of an INSERT/UPDATE writes, however they are bound.

    A ``values()`` entry bound under any name is resolved from the execution's parameters;
    parameters named after a column (with no ``values()`` entry of their own) write it too.
    Checking parameter keys alone let a value bound as ``bindparam("to")`` through.
    """
    rows = []
    for params in _rows(state) or [{}]:
        for values in _statement_values(state.statement):
            row = {key: _resolve(v, params) for key, v in values.items()}
            row.update({k: v for k, v in params.items() if k in table.c and k not in values})
            rows.append(row)
    return rows


def _check_tenant_values(table: Table, rows: list[dict[str, Any]], tenant_id: str) -> None:
    """Refuse rows that write another tenant's id (or one computed in SQL)."""
    for row in rows:
        value = row.get("tenant_id", tenant_id)
        if value is COMPUTED:
            raise CrossTenantWrite(f"{table.name}.tenant_id is computed in SQL; bind a value")
        if value not in (tenant_id, None):
            raise NotFound("tenant", value, hint="write rows in your own tenant")


def _check_bulk_update_ids(
    state: ORMExecuteState, table: Table, rows: list[dict[str, Any]], tenant_id: str
) -> None:
    """A bulk update by primary key naming another tenant's row: :class:`NotFound`."""
    ids = [row["id"] for row in rows if "id" in row]
    query = select(table.c.id).where(table.c.id.in_(ids), table.c.tenant_id == tenant_id)
    found = set(state.session.execute(query).scalars())
    for missing in ids:
        if missing not in found:
            raise NotFound(table.name, missing)


def _check_parent_values(
    session: Session, table: Table, rows: list[dict[str, Any]], tenant_id: str
) -> None:
    """Refuse updated foreign keys naming another tenant's parent: one query per key column.

    Inserts are checked by the database itself (revision 0008's triggers, every writer).
    """
    for column in table.c:
        if not column.foreign_keys:  # (a JSON value, e.g. a step's config, is not hashable)
            continue
        values = {row[column.key] for row in rows if row.get(column.key) is not None}
        for fk in column.foreign_keys if values and column.name != "tenant_id" else ():
            parent = fk.column.table
            if "tenant_id" not in parent.c or parent.name == "personas":
                continue
            if COMPUTED in values:
                raise CrossTenantWrite(
                    f"{table.name}.{column.name} is computed in SQL; bind a value"
                )
            # on the connection: unscoped, so another tenant's parent is seen (and refused)
            query = select(fk.column).where(fk.column.in_(values), parent.c.tenant_id != tenant_id)
            foreign = session.connection().execute(query.limit(1)).scalar()
            if foreign is not None:
                where = f"{table.name}.{column.name} {foreign!r}"
                raise CrossTenantWrite(f"{where} points at a {parent.name} row of another tenant")


def _owned_froms(statement: Select[Any]) -> list[FromClause]:
    """The tenant-owned tables (or aliases of them) a select reads from directly, joins too."""
    found: list[FromClause] = []
    stack = list(statement.get_final_froms())
    while stack:
        item = stack.pop()
        if isinstance(item, Join):
            stack += [item.left, item.right]
            continue
        table = item.element if isinstance(item, Alias) else item
        if isinstance(table, Table) and "tenant_id" in table.c and table.name != "tenant_moves":
            found.append(item)
    return found


def _own_rows(item: FromClause, tenant_id: str, *, reading: bool) -> Any:
    own = item.c.tenant_id == tenant_id
    if reading and _base_name(item) == "personas":  # global personas are readable everywhere
        own = own | item.c.tenant_id.is_(None)
    return own


def _base_name(item: FromClause) -> str:
    return str(getattr(item.element if isinstance(item, Alias) else item, "name", ""))


def _scope_selects(statement: Executable, tenant_id: str) -> Executable:
    """Add the tenant criterion to every select in ``statement``: subqueries, EXISTS, unions.

    ORM entities also get :func:`with_loader_criteria`; this covers Core tables (and their
    aliases) wherever they appear, so a subquery cannot reach another tenant's rows.
    """
    busy: set[int] = set()

    def replace(element: Any) -> Any:
        if isinstance(element, ExecutableOption):
            return element  # loader options (with_loader_criteria...) are not copied
        if not isinstance(element, Select) or id(element) in busy:
            return None
        busy.add(id(element))  # the nested traversal clones this select, then its children
        inner: Any = visitors.replacement_traverse(element, {}, replace)  # type: ignore[call-overload]
        return inner.where(*(_own_rows(f, tenant_id, reading=True) for f in _owned_froms(inner)))

    scoped: Any = visitors.replacement_traverse(statement, {}, replace)  # type: ignore[call-overload]
    return scoped


def _scope_core_statement(state: ORMExecuteState, tenant_id: str) -> None:
    statement = state.statement
    if not isinstance(statement, (Select, Insert, Update, Delete)):
        return  # lambda statements: the ORM's own loads, covered by with_loader_criteria
    scoped = _scope_selects(statement, tenant_id)
    if isinstance(scoped, (Update, Delete)):
        table = _owned_table(state)
        if table is not None and state.bind_mapper is None:  # a Core table: scope it here
            scoped = scoped.where(_own_rows(table, tenant_id, reading=False))
    state.statement = scoped


def _check_writes(state: ORMExecuteState, tenant_id: str) -> list[dict[str, Any]]:
    """Check what an INSERT/UPDATE of a tenant-owned table writes; returns its rows."""
    table = _owned_table(state) if state.is_insert or state.is_update else None
    if table is None:
        return []
    rows = _written_rows(state, table)
    _check_tenant_values(table, rows, tenant_id)
    if state.is_update:
        if state.is_executemany:
            _check_bulk_update_ids(state, table, rows, tenant_id)
        # inserts' parents are checked by the database itself (revision 0008, every writer)
        _check_parent_values(state.session, table, rows, tenant_id)
    return rows


@event.listens_for(NyxSession, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> Any:
    tenant_id = getattr(state.session, "tenant_id", None)
    if tenant_id is None or state.is_column_load:
        return None
    rows = _check_writes(state, tenant_id)
    _scope_core_statement(state, tenant_id)
    if state.is_insert:
        return _stamp_insert(state, rows, tenant_id)
    if state.is_update and state.is_executemany:
        return None
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(
            _tenant_criteria(tenant_id), _persona_criteria(tenant_id, shared=state.is_select)
        )
    return None


def _stamp_insert(state: ORMExecuteState, rows: list[dict[str, Any]], tenant_id: str) -> Any:
    """Write the session's tenant into rows that name none (the checks refused any other)."""
    statement = state.statement
    if not rows or all(row.get("tenant_id") is not None for row in rows):
        return None
    if not _rows(state) or any("tenant_id" in v for v in _statement_values(statement)):
        if isinstance(statement, Insert) and not getattr(statement, "_multi_values", ()):
            state.statement = statement.values(tenant_id=tenant_id)
        return None
    params = state.parameters
    if isinstance(params, dict):  # one row stays one row (a list would make it a bulk insert)
        return state.invoke_statement(params={**params, "tenant_id": tenant_id})
    return state.invoke_statement(params=[{**r, "tenant_id": tenant_id} for r in _rows(state)])


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
    for obj in session.dirty:  # new rows' parents: checked by the database (revision 0008)
        if isinstance(obj, models.TenantOwned):
            _check_parents(session, obj, tenant_id)
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, models.Persona) and obj.tenant_id is None:
            raise ConfigError(
                f"persona {obj.name!r} is global and read-only in a tenant session",
                hint="add a persona of the same name to your tenant to override it",
            )


def _check_parents(session: Session, obj: Any, tenant_id: str) -> None:
    """Refuse a changed row that points (by foreign key) at another tenant's parent row."""
    table = inspect(obj).mapper.local_table
    changed = {
        attr.key: attr.value
        for attr in inspect(obj).attrs
        if attr.key in table.c and attr.history.added
    }
    if changed:
        _check_parent_values(session, table, [changed], tenant_id)
