"""A tenant session's writes are checked by the values they write, however those are bound.

The check used to match parameter keys to column names, so a value bound under another name
(``values(step_id=bindparam("to"))``) went through: an item re-parented into another tenant's
fan-out step, a workflow handed to another tenant, a workflow created in another tenant.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update

import nyxnb
from nyxnb.errors import CrossTenantWrite, NotFound
from nyxnb.store.models import Project, StepItem, Workflow, WorkflowStep, new_id, utcnow
from tests.test_tenancy import World, build_two_tenants

ITEMS: Any = StepItem.__table__
WORKFLOWS: Any = Workflow.__table__


@pytest.fixture
def world(store: nyxnb.Store) -> World:
    return build_two_tenants(store)


def _new_workflow(world: World, tenant_id: Any, graph: str = "a") -> dict[str, Any]:
    now = utcnow()
    project = getattr(world, graph)[Project]
    return {"id": new_id(), "tenant_id": tenant_id, "project_id": project,
            "name": "sneaky", "status": "pending", "spec": {}, "created_at": now,
            "updated_at": now}  # fmt: skip


def _shapes(world: World) -> dict[str, tuple[Any, Any]]:
    """Each cross-tenant write, with its values bound under names that are not columns."""
    item, step, wf = world.a[StepItem], world.b[WorkflowStep], world.a[Workflow]
    other = world.b_id
    created = _new_workflow(world, bindparam("whose"), "b")  # b's project: no trigger fires
    return {
        "re-parent an item (ORM entity)": (
            update(StepItem).where(StepItem.id == item).values(step_id=bindparam("to")),
            {"to": step},
        ),
        "re-parent an item (Core table)": (
            update(ITEMS).where(ITEMS.c.id == item).values(step_id=bindparam("to")),
            {"to": step},
        ),
        "hand a workflow over (ORM entity)": (
            update(Workflow).where(Workflow.id == wf).values(tenant_id=bindparam("t")),
            {"t": other},
        ),
        "hand a workflow over (Core table)": (
            update(WORKFLOWS).where(WORKFLOWS.c.id == wf).values(tenant_id=bindparam("t")),
            {"t": other},
        ),
        "create a workflow in another tenant (ORM entity)": (
            insert(Workflow).values(**created),
            [{"whose": other}],  # executemany
        ),
        "create a workflow in another tenant (Core table)": (
            insert(WORKFLOWS).values(**created),
            [{"whose": other}],
        ),
    }


SHAPES = [
    "re-parent an item (ORM entity)",
    "re-parent an item (Core table)",
    "hand a workflow over (ORM entity)",
    "hand a workflow over (Core table)",
    "create a workflow in another tenant (ORM entity)",
    "create a workflow in another tenant (Core table)",
]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_cross_tenant_value_bound_under_another_name_is_refused(
    store: nyxnb.Store, world: World, shape: str
) -> None:
    statement, params = _shapes(world)[shape]
    with pytest.raises((CrossTenantWrite, NotFound)), store.tenant("a") as s:
        s.execute(statement, params)
    with store.session() as s:  # nothing was written
        assert s.get_one(StepItem, world.a[StepItem]).step_id == world.a[WorkflowStep]
        assert s.get_one(Workflow, world.a[Workflow]).tenant_id == world.a_id
        names = set(s.scalars(select(Workflow.name).where(Workflow.tenant_id == world.b_id)))
        assert "sneaky" not in names


def test_the_same_writes_within_the_tenant_go_through(store: nyxnb.Store, world: World) -> None:
    own_step = world.a[WorkflowStep]
    with store.tenant("a") as s:
        s.execute(
            update(StepItem)
            .where(StepItem.id == world.a[StepItem])
            .values(step_id=bindparam("to")),
            {"to": own_step},
        )
        s.execute(insert(WORKFLOWS).values(**_new_workflow(world, bindparam("whose"))),
                  {"whose": world.a_id})  # fmt: skip
    with store.session() as s:
        assert s.get_one(StepItem, world.a[StepItem]).step_id == own_step
        assert "sneaky" in set(
            s.scalars(select(Workflow.name).where(Workflow.tenant_id == world.a_id))
        )


def test_a_single_dict_insert_of_an_entity_is_stamped(store: nyxnb.Store, world: World) -> None:
    """``s.execute(insert(Workflow), {...})`` raised ValueError: the one row went on as a list."""
    row = _new_workflow(world, None)
    del row["tenant_id"]
    with store.tenant("a") as s:
        s.execute(insert(Workflow), row)
    with store.session() as s:
        assert s.get_one(Workflow, row["id"]).tenant_id == world.a_id
    with pytest.raises(NotFound), store.tenant("a") as s:
        s.execute(insert(Workflow), {**row, "id": new_id(), "tenant_id": world.b_id})
