"""Revisions: re-run a workflow with a changed spec as a new workflow (``revision_of`` = the old).

The new workflow's steps are written up front; a step whose definition (type, persona, provider
chain, model, prompt template, config) is unchanged, that the old run completed, and that
``from_step`` does not force, starts out *completed* with the old step's output, input hash and
items.  The runner then re-renders every step: if what it reads is unchanged its input hash
matches and it is skipped with no provider call and no cache lookup; if an earlier step's output
changed, the rendered prompt (and so the hash) differs and it runs again.  Fan-out items are
copied one by one, so only the items whose input changed are called.  The old run is only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from nyxnb.engine import api
from nyxnb.engine.calls.chain import RetryPolicy
from nyxnb.engine.durable.records import ITEMS, STEPS, WORKFLOWS
from nyxnb.engine.workflows import RunOptions, create_workflow
from nyxnb.errors import NotFound, SpecError
from nyxnb.spec import WorkflowSpec, load_spec, stored_spec
from nyxnb.store.database import Database
from nyxnb.store.models import COMPLETED, PENDING, Tenant, Workflow, new_id, utcnow

SpecArg = WorkflowSpec | dict[str, Any] | str | Path
_DEFINITION = ("type", "persona", "provider", "fallback", "model", "prompt", "config")


@dataclass(frozen=True)
class Revision:
    """One workflow of a lineage."""

    id: str
    name: str
    status: str
    revision_of: str | None
    created_at: datetime | None
    finished_at: datetime | None


def _old_workflow(store: Database, workflow_id: str, tenant_id: str | None) -> Workflow:
    with store.session(tenant_id, read_only=True) as s:
        wf = s.get(Workflow, workflow_id)
        if wf is None:
            raise NotFound("workflow", workflow_id, hint="list workflows with `nyxnb list`")
        s.expunge(wf)
        return wf


def _forced(steps: list[dict[str, Any]], from_step: str | None) -> set[str]:
    """Names of the steps ``from_step`` forces: it and every step after it (generated too)."""
    if from_step is None:
        return set()
    names = [s["name"] for s in steps]
    if from_step not in names:
        raise SpecError(
            f"--from {from_step!r} is not a step of the new spec",
            field="from_step",
            hint=f"steps: {', '.join(names)}",
        )
    first = next(s["order"] for s in steps if s["name"] == from_step)
    return {s["name"] for s in steps if s["order"] >= first}


def _reusable(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    return (
        old is not None
        and old["status"] == COMPLETED
        and old["output"] is not None
        and all(new[k] == old[k] for k in _DEFINITION)
    )


def _same_call(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Same calls for the same inputs: fan-out items whose input hash matches can be kept."""
    return new["type"] == "fan-out" and all(new[k] == old[k] for k in _DEFINITION if k != "config")


def _copy_items(conn: Any, old_step_id: str, new_step: dict[str, Any]) -> None:
    if isinstance((new_step["config"] or {}).get("items_from"), dict):
        _copy_rows_by_key(conn, old_step_id, new_step["id"])
        return
    rows = conn.execute(select(ITEMS).where(ITEMS.c.step_id == old_step_id)).mappings().all()
    now = utcnow()
    fresh = [
        {
            **{k: r[k] for k in ("idx", "heading", "input", "input_hash", "provider")},
            "id": new_id(),
            "tenant_id": new_step["tenant_id"],
            "step_id": new_step["id"],
            "status": COMPLETED,
            "output": r["output"],
            "created_at": now,
            "updated_at": now,
        }
        for r in rows
        if r["status"] == COMPLETED and r["output"] is not None
    ]
    if fresh:
        conn.execute(insert(ITEMS), fresh)


def _copy_rows_by_key(conn: Any, old_step_id: str, new_step_id: str) -> None:
    """A dataset fan-out: each new row takes the old output of the row with its key.

    The rows were materialised from the new dataset when the revision was created; the runner
    then re-renders every row, and a row whose content changed no longer matches the input hash
    it took over, so it alone is called again.  A row the new dataset lacks is not there.
    """
    old = ITEMS.alias("old")
    conn.execute(
        update(ITEMS)
        .where(
            ITEMS.c.step_id == new_step_id,
            old.c.step_id == old_step_id,
            old.c.key == ITEMS.c.key,
            old.c.status == COMPLETED,
            old.c.output.is_not(None),
        )
        .values(
            status=COMPLETED,
            output=old.c.output,
            input=old.c.input,
            input_hash=old.c.input_hash,
            provider=old.c.provider,
            updated_at=utcnow(),
        )
    )


def _carry_over(
    store: Database, old_id: str, new_id_: str, forced: set[str], same_generate: bool
) -> list[str]:
    """Pre-populate the new workflow from the old; returns the names of the steps taken over."""
    taken: list[str] = []
    with store.begin() as conn:
        old = {
            r["name"]: dict(r)
            for r in conn.execute(select(STEPS).where(STEPS.c.workflow_id == old_id)).mappings()
        }
        new_steps = [
            dict(r)
            for r in conn.execute(select(STEPS).where(STEPS.c.workflow_id == new_id_)).mappings()
        ]
        for step in new_steps:
            prior = old.get(step["name"])
            if step["name"] in forced or prior is None:
                continue
            if not _reusable(step, prior):
                if _same_call(step, prior):  # e.g. a fan-out's item list changed: keep the rest
                    _copy_items(conn, prior["id"], step)
                continue
            conn.execute(
                update(STEPS)
                .where(STEPS.c.id == step["id"])
                .values(
                    status=COMPLETED,
                    output=prior["output"],
                    input_hash=prior["input_hash"],
                    reused_from=prior["id"],
                    score=prior["score"],
                    completed_at=prior["completed_at"],
                    updated_at=utcnow(),
                )
            )
            _copy_items(conn, prior["id"], step)
            taken.append(step["name"])
        if same_generate:
            taken += _copy_generated(conn, old.values(), new_steps, forced)
    return taken


def _copy_generated(
    conn: Any, old: Any, new_steps: list[dict[str, Any]], forced: set[str]
) -> list[str]:
    """Copy the old run's generated steps; the runner replaces them if the items changed."""
    first = len(new_steps)
    rows, now = [], utcnow()
    generated = sorted((s for s in old if s["auto_generated"]), key=lambda s: s["order"])
    for offset, s in enumerate(generated):
        reuse = s["name"] not in forced and s["status"] == COMPLETED and s["output"] is not None
        rows.append(
            {
                **{k: s[k] for k in ("name", "type", "persona", "provider", "fallback", "model")},
                **{"prompt": s["prompt"], "config": s["config"], "auto_generated": True},
                "id": new_id(),
                "tenant_id": new_steps[0]["tenant_id"],
                "workflow_id": new_steps[0]["workflow_id"],
                "order": first + offset,
                "status": COMPLETED if reuse else PENDING,
                "output": s["output"] if reuse else None,
                "input_hash": s["input_hash"] if reuse else None,
                "reused_from": s["id"] if reuse else None,
                "created_at": now,
                "updated_at": now,
            }
        )
    if rows:
        conn.execute(insert(STEPS), rows)
    return [r["name"] for r in rows if r["reused_from"]]


def create_revision(
    store: Database,
    workflow_id: str,
    spec: SpecArg | None = None,
    *,
    from_step: str | None = None,
    tenant: str | None = None,
    options: RunOptions | None = None,
) -> str:
    """Write the revision of ``workflow_id`` for ``spec`` (default: its own); returns its id."""
    old = _old_workflow(store, workflow_id, store.tenant_id(tenant))
    parsed = load_spec(spec) if spec is not None else stored_spec(old.spec)
    with store.session(old.tenant_id, read_only=True) as s:
        slug = s.get_one(Tenant, old.tenant_id).slug
    new = create_workflow(store, parsed, tenant=slug, project=old.project_id, options=options)
    with store.begin() as conn:
        conn.execute(update(WORKFLOWS).where(WORKFLOWS.c.id == new).values(revision_of=old.id))
        steps = [
            dict(r)
            for r in conn.execute(
                select(STEPS.c.name, STEPS.c.order).where(STEPS.c.workflow_id == new)
            ).mappings()
        ]
    new_spec = stored_spec(_stored_spec(store, new))
    same_generate = new_spec.generate == stored_spec(old.spec).generate
    forced = _forced(steps, from_step)
    if from_step is not None:
        forced |= _generated_names(store, old.id)
    _carry_over(store, old.id, new, forced, same_generate)
    return new


def _stored_spec(store: Database, workflow_id: str) -> dict[str, Any]:
    with store.reading() as conn:
        spec = conn.scalar(select(WORKFLOWS.c.spec).where(WORKFLOWS.c.id == workflow_id))
    return dict(spec or {})


def _generated_names(store: Database, workflow_id: str) -> set[str]:
    query = select(STEPS.c.name).where(
        STEPS.c.workflow_id == workflow_id, STEPS.c.auto_generated.is_(True)
    )
    with store.reading() as conn:
        return set(conn.scalars(query))


def lineage(store: Database, workflow_id: str, *, tenant: str | None = None) -> list[Revision]:
    """Every workflow of ``workflow_id``'s lineage (its root and all revisions), oldest first."""
    root = _old_workflow(store, workflow_id, store.tenant_id(tenant))
    with store.session(root.tenant_id, read_only=True) as s:
        seen = {root.id}
        while root.revision_of and root.revision_of not in seen:
            parent = s.get(Workflow, root.revision_of)
            if parent is None:
                break
            root = parent
            seen.add(root.id)
        family, frontier = [root], [root.id]
        while frontier:
            children = list(s.scalars(select(Workflow).where(Workflow.revision_of.in_(frontier))))
            family += children
            frontier = [c.id for c in children]
        family.sort(key=lambda w: w.created_at)
        return [
            Revision(w.id, w.name, w.status, w.revision_of, w.created_at, w.finished_at)
            for w in family
        ]


def rerun_job(
    workflow_id: str,
    spec: SpecArg | None = None,
    *,
    from_step: str | None = None,
    store: api.StoreArg = None,
    tenant: str | None = None,
    provider: str | None = None,
    cache: bool | None = None,
    drive: api.Drive | None = None,
) -> api.Job:
    """Create the revision and return the job that runs it (its events carry the new id)."""
    st = api._store(store)
    options = RunOptions(provider=provider, cache=cache)
    new = create_revision(
        st, workflow_id, spec, from_step=from_step, tenant=tenant, options=options
    )
    return (drive or api.Drive()).job(st, new, st.tenant_id(tenant))


def rerun(
    workflow_id: str,
    spec: SpecArg | None = None,
    *,
    from_step: str | None = None,
    store: api.StoreArg = None,
    tenant: str | None = None,
    provider: str | None = None,
    cache: bool | None = None,
    on_event: api.OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: api.ProviderOptions | None = None,
) -> api.RunResult:
    """Re-run ``workflow_id`` with ``spec`` as a new revision, to the end (sync; notebooks too).

    Unchanged steps take the old outputs without a provider call; ``from_step`` forces that step
    and every one after it to run again.  Returns the new workflow's :class:`RunResult`.
    """
    drive = api.Drive(on_event, retry, provider_options)
    job = rerun_job(
        workflow_id,
        spec,
        from_step=from_step,
        store=store,
        tenant=tenant,
        provider=provider,
        cache=cache,
        drive=drive,
    )
    return api._collect(api.job_events_sync(job))
