"""Clone a workflow's definition: the user's steps in their order, every run artefact cleared.

Steps the engine generated during a run (``auto_generated``: the consistency check, one
implementation prompt per item) are left out by that flag -- never by type name -- and the kept
steps are sorted by their original ``order`` and re-indexed ``0..n-1``.  Statuses go back to
``pending``; outputs, fan-out items, input hashes, errors and timestamps are not copied; persona,
provider chain, model, prompt, config and the workflow's spec are.  A running workflow can be
cloned: only its definition is read.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import selectinload

from nyxnb.errors import ConfigError, NotFound
from nyxnb.store.database import NyxSession, Store
from nyxnb.store.models import PENDING, Project, Workflow, WorkflowStep, new_id

#: The columns of a step that make up its definition (everything else is run state).
STEP_DEFINITION = ("name", "type", "persona", "provider", "fallback", "model", "prompt", "config")


@dataclass(frozen=True)
class ClonePlan:
    """What :func:`clone_workflow` would write: the new workflow and its steps, in order."""

    source_id: str
    source_name: str
    tenant_id: str
    project_id: str
    name: str
    spec: dict[str, Any]
    steps: tuple[dict[str, Any], ...]
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"clone {self.source_name!r} ({self.source_id}) as {self.name!r}"]
        lines += [f"  {s['order']:>3}  {s['name']} ({s['type']})" for s in self.steps]
        if self.dropped:
            lines.append(f"  generated steps left out: {', '.join(self.dropped)}")
        return "\n".join(lines)


def plan_clone(
    store: Store,
    workflow_id: str,
    name: str | None = None,
    project: str | None = None,
    *,
    tenant: str | None = None,
) -> ClonePlan:
    """Read a workflow's definition and describe its clone; writes nothing."""
    tenant_id = store.tenant_id(tenant)
    with store.session(tenant_id) as s:
        wf = _find_workflow(s, workflow_id)
        project_id = wf.project_id if project is None else _find_project(s, wf.tenant_id, project)
        rows = s.scalars(
            select(WorkflowStep)
            .where(WorkflowStep.workflow_id == wf.id)
            .order_by(WorkflowStep.order, WorkflowStep.created_at, WorkflowStep.id)
        ).all()
    kept = [st for st in rows if not st.auto_generated]
    steps = tuple(
        {"order": i, **{k: copy.deepcopy(getattr(st, k)) for k in STEP_DEFINITION}}
        for i, st in enumerate(kept)
    )
    return ClonePlan(
        source_id=wf.id,
        source_name=wf.name,
        tenant_id=wf.tenant_id,
        project_id=project_id,
        name=name or f"{wf.name} (clone)",
        spec=copy.deepcopy(wf.spec or {}),
        steps=steps,
        dropped=tuple(st.name for st in rows if st.auto_generated),
    )


def _find_workflow(s: NyxSession, key: str) -> Workflow:
    found = s.get(Workflow, key)
    if found is not None:
        return found
    named = s.scalars(select(Workflow).where(Workflow.name == key).limit(2)).all()
    if len(named) > 1:
        raise ConfigError(f"several workflows are named {key!r}", hint="give the workflow id")
    if not named:
        raise NotFound("workflow", key, hint="list workflows with `nyxnb list`")
    return named[0]


def _find_project(s: NyxSession, tenant_id: str, key: str) -> str:
    found = s.scalar(
        select(Project.id).where(
            Project.tenant_id == tenant_id, (Project.id == key) | (Project.name == key)
        )
    )
    if found is None:
        raise NotFound("project", key, hint="a clone stays in its tenant; pick one of its projects")
    return str(found)


def apply_clone(store: Store, plan: ClonePlan) -> Workflow:
    """Write the workflow described by ``plan``; returns it with its steps loaded."""
    wf_id = new_id()
    with store.session(plan.tenant_id) as s:
        s.add(
            Workflow(
                id=wf_id,
                tenant_id=plan.tenant_id,
                project_id=plan.project_id,
                name=plan.name,
                status=PENDING,
                spec=copy.deepcopy(plan.spec),
                cloned_from_id=plan.source_id,
            )
        )
        s.flush()
        if plan.steps:
            fresh = {"tenant_id": plan.tenant_id, "workflow_id": wf_id, "status": PENDING}
            s.execute(insert(WorkflowStep), [{**st, **fresh} for st in plan.steps])
        query = select(Workflow).options(selectinload(Workflow.steps)).where(Workflow.id == wf_id)
        return s.scalars(query).one()


def clone_workflow(
    store: Store,
    workflow_id: str,
    name: str | None = None,
    project: str | None = None,
    *,
    tenant: str | None = None,
) -> Workflow:
    """Clone a workflow's definition (user steps only, in order, pending); returns the new one."""
    return apply_clone(store, plan_clone(store, workflow_id, name, project, tenant=tenant))
