"""Tenancy of Core writes and of subqueries (both backends).

The store itself refuses an inserted row whose parent belongs to another tenant (revision 0008's
triggers), so the engine's bulk Core inserts (``llm_calls``, ``step_items``, ``workflow_steps``
...) are checked however they are written; a tenant session scopes every select of a statement,
subqueries and EXISTS included, and Core updates and deletes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import pytest
from sqlalchemy import exists, func, insert, select, text, update

import nyxnb
from nyxnb.engine.durable import items, records
from nyxnb.engine.durable.rows import ItemRows
from nyxnb.engine.outcomes import Attempt, ChainResult
from nyxnb.errors import CrossTenantWrite
from nyxnb.providers.base import Completion
from nyxnb.store.models import Base, Project, StepItem, Workflow, WorkflowStep, new_id, utcnow
from nyxnb.store.schema import MIGRATIONS
from tests.test_tenancy import ORDER, World, build_two_tenants, row_kwargs

REVISION = MIGRATIONS / "versions" / "0008_tenancy_parent_triggers.py"


@pytest.fixture
def world(store: nyxnb.Store) -> World:
    return build_two_tenants(store)


def _revision() -> Any:
    spec = importlib.util.spec_from_file_location("rev0008", REVISION)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tenant_parent_keys() -> set[tuple[str, str, str]]:
    keys = set()
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys if "tenant_id" in table.c else ():
            parent = fk.column.table
            if "tenant_id" in parent.c and fk.parent.name != "tenant_id":
                keys.add((table.name, fk.parent.name, parent.name))
    return keys


def test_every_tenant_owned_foreign_key_has_a_trigger(store: nyxnb.Store) -> None:
    assert set(_revision().PARENT_KEYS) == _tenant_parent_keys()  # a new key needs a revision
    if store.dialect == "sqlite":
        names = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    else:
        names = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    with store.reading() as conn:
        found = set(conn.execute(text(names)).scalars())
    assert {f"nyx_tenant_{c}_{col}" for c, col, _ in _revision().PARENT_KEYS} <= found


def _count(store: nyxnb.Store, model: type[Base]) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def _forged(model: type[Base], world: World, tag: str) -> dict[str, Any]:
    """A row of tenant b whose parents are tenant a's, with every NOT NULL column set."""
    now = utcnow()
    row = {"id": new_id(), "tenant_id": world.b_id, **row_kwargs(model, world.a, tag)}
    for column in model.__table__.c:  # type: ignore[attr-defined]
        if column.key not in row and column.default is not None and column.default.is_scalar:
            row[column.key] = column.default.arg
    return {**row, "created_at": now, "updated_at": now}


@pytest.mark.parametrize("how", ["connection", "tenant session"])
def test_bulk_core_insert_under_another_tenants_parent_is_refused(
    store: nyxnb.Store, world: World, how: str
) -> None:
    children = [m for m in ORDER if any(k[0] == m.__tablename__ for k in _tenant_parent_keys())]
    assert len(children) >= 10
    for model in children:
        table = model.__table__  # type: ignore[attr-defined]
        own = {**_forged(model, world, "own"), "tenant_id": world.a_id}
        rows = [own, _forged(model, world, "forged")]  # one good row, one cross-tenant row
        before = _count(store, model)
        with pytest.raises(CrossTenantWrite, match="another tenant"):
            if how == "connection":
                with store.begin() as conn:
                    conn.execute(insert(table), rows)
            else:
                with store.tenant("b") as s:
                    s.execute(insert(table), rows[1:])
        assert _count(store, model) == before, f"{model.__name__}: a row was written"


def test_the_engines_item_commit_refuses_a_step_of_another_tenant(
    store: nyxnb.Store, world: World
) -> None:
    """A stale ``StepRow`` (its tenant changed under it) cannot write ledger or item rows."""
    (real,) = [
        st for st in records.load_steps(store, world.a[Workflow]) if st.id == world.a[WorkflowStep]
    ]
    step = dataclasses.replace(real, tenant_id=world.b_id)  # wrong: the step is tenant a's
    attempt = Attempt("offline", "offline-echo", 1, "ok")
    answer = Completion("done", "end", 1, 1, "offline-echo", "offline")
    result = ChainResult(answer, [attempt])
    items_before = _count(store, StepItem)
    rows = items.item_rows(step, 0, "done", result)
    sent = ItemRows([records.sent_row(step, 1, "offline", "m", 0.01)], None, None)
    for batch in ([rows], [sent]):
        with pytest.raises(CrossTenantWrite, match="llm_calls"), store.begin() as conn:
            items.write_items(conn, batch)
    with pytest.raises(CrossTenantWrite, match="step_items"):
        items.sync_items(store, step, [("h", "in", "x" * 64)] * 3)
    assert _count(store, StepItem) == items_before  # nothing of it was written


def test_tenant_session_updates_of_a_core_table_touch_only_its_rows(
    store: nyxnb.Store, world: World
) -> None:
    projects = Project.__table__
    with store.tenant("a") as s:
        s.execute(update(projects).values(name=projects.c.name + " (a)"))
    with store.session() as s:
        names = {pid: name for pid, name in s.execute(select(Project.id, Project.name))}
    assert names[world.a[Project]].endswith(" (a)")
    assert not names[world.b[Project]].endswith(" (a)")
    items = StepItem.__table__
    with pytest.raises(CrossTenantWrite), store.tenant("b") as s:  # re-point at a's step
        s.execute(
            update(items).where(items.c.id == world.b[StepItem]),
            [{"step_id": world.a[WorkflowStep]}],
        )


def test_subqueries_and_exists_of_a_tenant_session_see_only_its_rows(
    store: nyxnb.Store, world: World
) -> None:
    for model in ORDER:
        t = model.__table__  # type: ignore[attr-defined]
        mine = world.visible_to_a(model)
        with store.tenant("a") as s:
            inner = select(t.c.id).subquery()
            assert set(s.scalars(select(inner.c.id))) == mine, model
            assert s.scalar(select(func.count()).select_from(inner)) == len(mine), model
            scalar = select(func.count(t.c.id)).scalar_subquery()
            assert s.scalar(select(scalar)) == len(mine), model
            nested = select(t.c.id).where(t.c.id.in_(select(t.c.id).where(t.c.id.is_not(None))))
            assert set(s.scalars(nested)) == mine, model
            alias = t.alias("other")
            assert set(s.scalars(select(alias.c.id))) == mine, model
            others = world.not_a(model)
            probe = select(exists().where(t.c.id.in_(sorted(others))))
            assert s.scalar(probe) is False, f"{model.__name__}: EXISTS saw another tenant"
            orm = select(model.id).where(model.id.in_(select(t.c.id)))  # type: ignore[attr-defined]
            assert set(s.scalars(orm)) == mine, model


def test_a_subquery_join_cannot_reach_another_tenants_children(
    store: nyxnb.Store, world: World
) -> None:
    steps, items = WorkflowStep.__table__, StepItem.__table__
    per_step = (
        select(items.c.step_id, func.count().label("n"))
        .join(steps, steps.c.id == items.c.step_id)
        .group_by(items.c.step_id)
        .subquery()
    )
    with store.tenant("b") as s:
        rows = s.execute(select(per_step.c.step_id, per_step.c.n)).all()
        assert {r.step_id for r in rows} <= {world.b[WorkflowStep]}
        union = select(steps.c.id).union(select(items.c.id)).subquery()
        seen = set(s.scalars(select(union.c.id)))
        assert seen == {world.b[WorkflowStep], world.b[StepItem], world.cross[WorkflowStep],
                        world.cross[StepItem]}  # fmt: skip


def test_sqlite_tenancy_triggers_read_a_parents_tenant_from_a_covering_index(
    store: nyxnb.Store,
) -> None:
    """A workflow's spec and a step's config hold every inline item before ``tenant_id`` in the
    row: a check that read the row walked megabytes of overflow pages per inserted item."""
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL keeps large values out of line (TOAST)")
    with store.reading() as conn:
        triggers = dict(
            conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all()
        )
        checked = 0
        for child, column, parent in _revision().PARENT_KEYS:
            if parent not in ("workflows", "workflow_steps"):
                continue
            sql = triggers[f"nyx_tenant_{child}_{column}"]
            query = sql[sql.index("SELECT 1 FROM") : sql.rindex(")", 0, sql.index(" BEGIN"))]
            query = query.replace(f"NEW.{column}", "'a'").replace("NEW.tenant_id", "'b'")
            plan = " ".join(r[-1] for r in conn.execute(text(f"EXPLAIN QUERY PLAN {query}")))
            assert f"COVERING INDEX ix_{parent}_id_tenant_id" in plan, (child, column, plan)
            checked += 1
    assert checked == 9
