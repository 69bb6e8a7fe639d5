"""Tenant isolation: a scoped session sees and touches only its tenant's rows (both backends).

Two tenants get a full graph of rows in every tenant-owned table, plus deliberately cross-tenant
children (b-owned rows pointing at a's parents), a persona each and one global persona.  A new
tenant-owned table fails :func:`test_every_tenant_owned_table_is_covered` until it is added to
:data:`ORDER` and :func:`row_kwargs`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import aliased, selectinload

import nyxnb
from nyxnb.store.models import (
    Base,
    CodePattern,
    Consolidation,
    LlmCache,
    LlmCall,
    Persona,
    Project,
    ProjectNote,
    ProjectSync,
    ProviderBatch,
    Repository,
    StepItem,
    Tenant,
    Workflow,
    WorkflowInsight,
    WorkflowStep,
    new_id,
    tenant_owned_models,
)

# Parents before children: the order rows are written in.
ORDER: list[type[Base]] = [
    Project,
    Repository,
    CodePattern,
    Persona,
    Workflow,
    WorkflowStep,
    StepItem,
    LlmCall,
    ProviderBatch,
    ProjectNote,
    ProjectSync,
    Consolidation,
    WorkflowInsight,
    LlmCache,
]
# Leaves: no other tenant's row can point at them, so deleting them cascades nowhere.
LEAVES = [CodePattern, Persona, StepItem, LlmCall, ProviderBatch, ProjectNote, ProjectSync,
          Consolidation, WorkflowInsight, LlmCache]  # fmt: skip
_serial = itertools.count(100)


def row_kwargs(model: type[Base], parents: dict[type[Base], str], tag: str) -> dict[str, Any]:
    """Column values for a new row of ``model`` whose parents are ``parents`` (no tenant_id)."""
    n = next(_serial)
    project, workflow = parents.get(Project), parents.get(Workflow)
    by_model: dict[type[Base], dict[str, Any]] = {
        Project: {"name": f"{tag} project {n}"},
        Repository: {"project_id": project, "owner": tag, "repo": f"repo-{n}"},
        CodePattern: {"repository_id": parents.get(Repository), "name": f"{tag} rule {n}",
                      "rule": "must be tested"},
        Persona: {"name": f"{tag} persona {n}", "system_prompt": f"You are {tag}."},
        Workflow: {"project_id": project, "name": f"{tag} workflow {n}"},
        WorkflowStep: {"workflow_id": workflow, "order": n, "name": f"{tag} step {n}"},
        StepItem: {"step_id": parents.get(WorkflowStep), "idx": n, "heading": f"{tag} item"},
        LlmCall: {"workflow_id": workflow, "step_id": parents.get(WorkflowStep),
                  "provider": "offline", "outcome": "ok"},
        ProviderBatch: {"workflow_id": workflow, "step_id": parents.get(WorkflowStep),
                        "provider": "anthropic"},  # fmt: skip
        ProjectNote: {"project_id": project, "title": f"{tag} note {n}"},
        ProjectSync: {"project_id": project, "source": f"{tag} sync {n}"},
        Consolidation: {"project_id": project, "title": f"{tag} consolidation {n}"},
        WorkflowInsight: {"project_id": project, "workflow_id": workflow,
                          "content": f"{tag} insight {n}"},
        LlmCache: {"id": f"{tag}-answer-{n}", "provider": "offline", "model": "offline-1",
                   "text": f"{tag} answer", "stop_reason": "end"},
    }  # fmt: skip
    return by_model[model]


@dataclass
class World:
    """Ids of every row: ``a`` and ``b`` graphs, b-owned ``cross`` rows under a's parents."""

    a_id: str
    b_id: str
    global_persona: str
    a: dict[type[Base], str] = field(default_factory=dict)
    b: dict[type[Base], str] = field(default_factory=dict)
    cross: dict[type[Base], str] = field(default_factory=dict)

    def visible_to_a(self, model: type[Base]) -> set[str]:
        return {self.a[model]} | ({self.global_persona} if model is Persona else set())

    def not_a(self, model: type[Base]) -> set[str]:
        return {self.b[model]} | ({self.cross[model]} if model in self.cross else set())

    def not_writable_by_a(self, model: type[Base]) -> set[str]:
        """Rows a may not change: other tenants' and the global persona (shared by everyone)."""
        return self.not_a(model) | ({self.global_persona} if model is Persona else set())


def _add(s: Any, model: type[Base], tenant_id: str | None, /, **kw: Any) -> str:
    if model is not Tenant:
        kw["tenant_id"] = tenant_id
    obj = model(**{"id": new_id(), **kw})
    s.add(obj)
    s.flush()
    return obj.id


@pytest.fixture
def world(store: nyxnb.Store) -> World:
    return build_two_tenants(store)


def build_two_tenants(store: nyxnb.Store) -> World:
    """Tenants a and b with a row in every tenant-owned table each, and b's cross rows."""
    with store.session() as s:
        a_id = _add(s, Tenant, None, slug="a", name="Tenant A")
        b_id = _add(s, Tenant, None, slug="b", name="Tenant B")
        w = World(a_id, b_id, _add(s, Persona, None, name="Global", system_prompt="Shared."))
        for tenant_id, graph, tag in ((a_id, w.a, "a"), (b_id, w.b, "b")):
            for model in ORDER:
                graph[model] = _add(s, model, tenant_id, **row_kwargs(model, graph, tag))
        # b-owned rows whose parent is a's: a's relationships must not load them.  The store
        # refuses to insert such a row (revision 0008), so each is written under a's tenant and
        # then handed to b: what a store written before that revision may still hold.
        for model in (Repository, Workflow, CodePattern, WorkflowStep, StepItem):
            w.cross[model] = _add(s, model, a_id, **row_kwargs(model, w.a, "x"))
            s.execute(update(model).where(model.id == w.cross[model]).values(tenant_id=b_id))
    return w


def _message_shape(exc: BaseException, key: str) -> str:
    return str(exc).replace(key, "<KEY>")


def test_every_tenant_owned_table_is_covered(world: World) -> None:
    owned = set(tenant_owned_models())
    assert set(ORDER) == owned, "add the new tenant-owned table to ORDER and row_kwargs"
    # tenant_owned_models() itself misses no table with a tenant_id column
    tables_with_tenant = {t.name for t in Base.metadata.tables.values() if "tenant_id" in t.c}
    assert {m.__tablename__ for m in owned} == tables_with_tenant - {"tenant_moves"}
    assert set(world.a) == set(world.b) == owned


def test_select_sees_only_own_rows(store: nyxnb.Store, world: World) -> None:
    for model in ORDER:
        with store.session() as s:  # unscoped: every row, so the checks below can fail
            everything = set(s.scalars(select(model.id)))
        assert world.visible_to_a(model) | world.not_a(model) <= everything
        with store.tenant("a") as s:
            assert {o.id for o in s.scalars(select(model))} == world.visible_to_a(model), model
            assert set(s.scalars(select(model.id))) == world.visible_to_a(model), model
            count = s.scalar(select(func.count()).select_from(model))
            assert count == len(world.visible_to_a(model)), model
            alias = aliased(model)
            assert set(s.scalars(select(alias.id))) == world.visible_to_a(model), model
        with store.tenant("b") as s:
            seen_by_b = {o.id for o in s.scalars(select(model))}
            assert seen_by_b & world.visible_to_a(model) == (
                {world.global_persona} if model is Persona else set()
            )
            assert world.b[model] in seen_by_b


def test_get_of_another_tenants_row_is_none_and_not_found(store: nyxnb.Store, world: World) -> None:
    missing = new_id()
    for model in ORDER:
        with store.tenant("a") as s:
            assert s.get(model, world.a[model]) is not None
            for other in world.not_a(model):
                assert s.get(model, other) is None, model
            with pytest.raises(nyxnb.NotFound) as absent:
                s.get_one(model, missing)
            for other in world.not_a(model):
                with pytest.raises(nyxnb.NotFound) as foreign:
                    s.get_one(model, other)
                assert type(foreign.value) is type(absent.value)
                assert _message_shape(foreign.value, other) == _message_shape(absent.value, missing)
                assert foreign.value.hint == absent.value.hint
    with store.tenant("b") as s:
        assert s.get(Persona, world.global_persona) is not None
        assert s.get(Persona, world.a[Persona]) is None


def test_joins_see_only_own_rows(store: nyxnb.Store, world: World) -> None:
    a = world.a
    with store.tenant("a") as s:
        pairs = s.execute(select(Project.id, Repository.id).join(Repository)).all()
        assert [tuple(p) for p in pairs] == [(a[Project], a[Repository])]
        assert s.scalars(select(Project).join(Repository)).all() == [s.get(Project, a[Project])]
        repos = s.scalars(select(Repository.id).join(Project).where(Project.id == a[Project]))
        assert repos.all() == [a[Repository]]
        patterns = select(CodePattern.id).join(Repository).join(Project)
        assert s.scalars(patterns).all() == [a[CodePattern]]
        items = select(StepItem.id).join(WorkflowStep).join(Workflow).join(Project)
        assert s.scalars(items).all() == [a[StepItem]]
        # joining from a's parent to the children table: the cross-tenant child stays hidden
        children = select(Workflow.id, WorkflowStep.id).join(WorkflowStep, Workflow.steps)
        assert [tuple(r) for r in s.execute(children)] == [(a[Workflow], a[WorkflowStep])]
        outer = select(func.count(Repository.id)).select_from(Project).outerjoin(Repository)
        assert s.scalar(outer) == 1
        # an explicit join onto another tenant's rows finds nothing
        forged = select(Project.id).join(Repository, Repository.project_id == Project.id)
        assert s.scalars(forged.where(Repository.id == world.cross[Repository])).all() == []


def test_lazy_and_eager_loads_exclude_cross_tenant_children(
    store: nyxnb.Store, world: World
) -> None:
    a = world.a
    with store.session() as s:  # the cross rows are really there
        assert len(s.get_one(Project, a[Project]).repositories) == 2
        assert len(s.get_one(WorkflowStep, a[WorkflowStep]).items) == 2
    with store.tenant("a") as s:
        project = s.get_one(Project, a[Project])
        assert [r.id for r in project.repositories] == [a[Repository]]
        assert [w.id for w in project.workflows] == [a[Workflow]]
        repository = project.repositories[0]
        assert [c.id for c in repository.code_patterns] == [a[CodePattern]]
        workflow = s.get_one(Workflow, a[Workflow])
        assert [st.id for st in workflow.steps] == [a[WorkflowStep]]
        assert [i.id for i in workflow.steps[0].items] == [a[StepItem]]
    with store.tenant("a") as s:
        eager = select(Project).options(
            selectinload(Project.repositories).selectinload(Repository.code_patterns),
            selectinload(Project.workflows).selectinload(Workflow.steps),
        )
        project = s.scalars(eager).one()
        assert [r.id for r in project.repositories] == [a[Repository]]
        assert [c.id for c in project.repositories[0].code_patterns] == [a[CodePattern]]
        assert [w.id for w in project.workflows] == [a[Workflow]]
        assert [st.id for st in project.workflows[0].steps] == [a[WorkflowStep]]


MARK = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)


def _marked(store: nyxnb.Store, model: type[Base]) -> set[str]:
    with store.session() as s:
        rows = s.execute(select(model.id, model.updated_at)).all()
    return {i for i, at in rows if at is not None and at.replace(tzinfo=UTC) == MARK}


def test_orm_update_touches_only_own_rows(store: nyxnb.Store, world: World) -> None:
    for model in ORDER:
        with store.tenant("a") as s:
            others = world.not_writable_by_a(model)
            forged = update(model).where(model.id.in_(others)).values(updated_at=MARK)
            assert s.execute(forged).rowcount == 0, model
            s.execute(update(model).values(updated_at=MARK))
        assert _marked(store, model) == {world.a[model]}, model


def test_orm_delete_touches_only_own_rows(store: nyxnb.Store, world: World) -> None:
    for model in LEAVES:
        with store.tenant("a") as s:
            forged = delete(model).where(model.id.in_(world.not_writable_by_a(model)))
            assert s.execute(forged).rowcount == 0, model
            s.execute(delete(model))
        with store.session() as s:
            left = set(s.scalars(select(model.id)))
        assert world.a[model] not in left, model
        assert world.not_a(model) <= left, model
        if model is Persona:
            assert world.global_persona in left, "a tenant deleted a global persona"


def test_added_rows_are_stamped_with_the_sessions_tenant(store: nyxnb.Store, world: World) -> None:
    new: dict[type[Base], str] = {}
    with store.tenant("a") as s:
        for model in ORDER:
            obj = model(**row_kwargs(model, world.a, "stamped"))
            s.add(obj)
            s.flush()
            new[model] = obj.id
    with store.session() as s:
        for model, row_id in new.items():
            assert s.get_one(model, row_id).tenant_id == world.a_id, model


def test_adding_a_row_for_another_tenant_raises_not_found(store: nyxnb.Store, world: World) -> None:
    for model in ORDER:
        before = _count(store, model)
        try:
            with store.tenant("a") as s:
                s.add(model(tenant_id=world.b_id, **row_kwargs(model, world.b, "forged")))
                s.flush()
        except nyxnb.NotFound as exc:
            assert "not found" in exc.message
        else:
            pytest.fail(f"{model.__name__}: a row for tenant b was accepted in a's session")
        assert _count(store, model) == before, f"{model.__name__}: a row was written"


def _count(store: nyxnb.Store, model: type[Base]) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_bulk_update_by_primary_key_cannot_reach_another_tenant(
    store: nyxnb.Store, world: World
) -> None:
    for model in ORDER:
        forged = [{"id": i, "updated_at": MARK} for i in sorted(world.not_writable_by_a(model))]
        try:
            with store.tenant("a") as s:
                s.execute(update(model), forged)
        except nyxnb.NotFound:
            pass  # refusing is fine; writing is not
        assert _marked(store, model) == set(), f"{model.__name__}: another tenant's row changed"
        with store.tenant("a") as s:  # one's own rows can still be bulk-updated
            s.execute(update(model), [{"id": world.a[model], "updated_at": MARK}])
        assert _marked(store, model) == {world.a[model]}, model


def test_bulk_insert_is_stamped_and_cannot_target_another_tenant(
    store: nyxnb.Store, world: World
) -> None:
    for model in ORDER:
        before = _count(store, model)
        forged = {"id": new_id(), "tenant_id": world.b_id, **row_kwargs(model, world.b, "bulk")}
        try:
            with store.tenant("a") as s:
                s.execute(insert(model), [forged])
        except nyxnb.NotFound:
            pass
        else:
            pytest.fail(f"{model.__name__}: bulk INSERT for tenant b accepted in a's session")
        assert _count(store, model) == before, f"{model.__name__}: a row was written"
        own = {"id": new_id(), **row_kwargs(model, world.a, "bulk")}
        with store.tenant("a") as s:
            s.execute(insert(model), [own])
        with store.session() as s:
            assert s.get_one(model, own["id"]).tenant_id == world.a_id, model
