"""The workflow queue: ``submit`` writes a ``queued`` workflow; workers claim the next one.

Why not procrastinate or pgqueuer: both are PostgreSQL-only (LISTEN/NOTIFY, their own job
tables and schema migrations), while nyxnb's queue must work on the embedded SQLite store too,
and a queued job here *is* a workflow row that already carries a run lease.  Claiming is one
short transaction over ``workflows`` -- ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL so
concurrent workers skip each other's candidate, ``BEGIN IMMEDIATE`` on SQLite -- that takes the
same lease :mod:`nyxnb.engine.durable.lease` renews, so a claimed workflow and a run of
``nyxnb resume`` exclude each other.  A ``running`` workflow whose lease expired (its worker
died) is claimable again: the new holder resumes it, and committed items are never called again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, or_, select, update

from nyxnb.engine.durable import lease, records
from nyxnb.engine.durable.records import ITEMS, STEPS, WORKFLOWS
from nyxnb.engine.workflows import RunOptions, create_workflow
from nyxnb.spec import WorkflowSpec
from nyxnb.store.database import Database
from nyxnb.store.models import PENDING, QUEUED, RUNNING, utcnow


def submit(
    store: Database,
    spec: WorkflowSpec | dict[str, Any] | str | Path,
    *,
    tenant: str,
    project: str,
    options: RunOptions | None = None,
) -> str:
    """Validate ``spec`` and queue a workflow for the workers (no provider call); its id."""
    workflow_id = create_workflow(store, spec, tenant=tenant, project=project, options=options)
    records.update_workflow(store, workflow_id, status=QUEUED)
    return workflow_id


def _runnable(now: Any, tenant_id: str | None) -> Any:
    crashed = and_(
        WORKFLOWS.c.status == RUNNING,
        or_(WORKFLOWS.c.lease_owner.is_(None), WORKFLOWS.c.lease_expires_at < now),
    )
    where = or_(WORKFLOWS.c.status == QUEUED, crashed)
    return and_(where, WORKFLOWS.c.tenant_id == tenant_id) if tenant_id else where


def claim_next(
    store: Database, owner: str, *, tenant_id: str | None = None, ttl_s: float = lease.TTL_S
) -> str | None:
    """Take the run lease (for ``ttl_s``) of the oldest queued or crashed-and-expired workflow."""
    now = utcnow()
    query = (
        select(WORKFLOWS.c.id)
        .where(_runnable(now, tenant_id))
        .order_by(WORKFLOWS.c.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    with store.begin() as conn:
        workflow_id = conn.scalar(query)
        if workflow_id is None:
            return None
        conn.execute(
            update(WORKFLOWS)
            .where(WORKFLOWS.c.id == workflow_id)
            .values(
                status=RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=ttl_s),
            )
        )
    return str(workflow_id)


@dataclass(frozen=True)
class SharedFanOut:
    """A running fan-out step (led by another worker) with items free to claim."""

    workflow_id: str
    step_id: str


def shared_fan_outs(store: Database, *, tenant_id: str | None = None) -> list[SharedFanOut]:
    """Fan-outs a worker with spare capacity can help: running, leased, with claimable items."""
    now = utcnow()
    claimable = exists().where(
        ITEMS.c.step_id == STEPS.c.id,
        ITEMS.c.status.in_((PENDING, RUNNING)),
        or_(ITEMS.c.claimed_by.is_(None), ITEMS.c.claim_expires_at < now),
    )
    query = (
        select(STEPS.c.workflow_id, STEPS.c.id)
        .join(WORKFLOWS, WORKFLOWS.c.id == STEPS.c.workflow_id)
        .where(
            STEPS.c.type == "fan-out",
            STEPS.c.status == RUNNING,
            WORKFLOWS.c.status == RUNNING,
            WORKFLOWS.c.lease_expires_at >= now,
            claimable,
        )
        .order_by(WORKFLOWS.c.created_at)
    )
    if tenant_id:
        query = query.where(WORKFLOWS.c.tenant_id == tenant_id)
    with store.reading() as conn:
        return [SharedFanOut(r[0], r[1]) for r in conn.execute(query)]


def busy(store: Database, *, tenant_id: str | None = None) -> bool:
    """True while any workflow is queued or running (a worker with --exit-when-idle stays)."""
    query = select(WORKFLOWS.c.id).where(WORKFLOWS.c.status.in_((QUEUED, RUNNING))).limit(1)
    if tenant_id:
        query = query.where(WORKFLOWS.c.tenant_id == tenant_id)
    with store.reading() as conn:
        return conn.scalar(query) is not None


def requeue(store: Database, workflow_id: str) -> None:
    """Put a drained workflow back in the queue for another worker."""
    records.update_workflow(store, workflow_id, status=QUEUED, finished_at=None)
