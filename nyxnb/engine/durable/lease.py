"""Run leases: at most one process executes a workflow at a time.

A lease is two columns of ``workflows`` (``lease_owner``, ``lease_expires_at``) taken with one
conditional UPDATE -- atomic on SQLite (``BEGIN IMMEDIATE``) and PostgreSQL (row lock) alike.  The
holder renews it every ``HEARTBEAT_S``; a killed holder's lease expires after ``TTL_S``, and a
holder on this host whose process is gone is detected at once (:mod:`nyxnb.store.holders`, which
every reader of the store asks too).

Fencing: the owner token is new for every run (``host:pid:nonce``), so it serves as the lease's
generation.  A run writes through its fenced gateway (:mod:`nyxnb.engine.durable.gateway`),
whose every write transaction first reads the lease row (``FOR SHARE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already holds the write lock) and refuses with :class:`LeaseLost` unless the
token is still its own -- so a runner that was stopped past its TTL (SIGSTOP, a suspended laptop)
and woke after another run took over can never write over that run's work.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, Table, and_, bindparam, select, update

from nyxnb.errors import LeaseHeld, LeaseLost, NotFound
from nyxnb.store.database import Database
from nyxnb.store.holders import TTL_S, holder_is_dead
from nyxnb.store.models import Workflow, aware, utcnow

HEARTBEAT_S = min(1.5, TTL_S / 4)


def acquire(
    store: Database,
    workflow_id: str,
    owner: str,
    *,
    tenant_id: str | None = None,
    ttl_s: float = TTL_S,
) -> None:
    """Take the lease for ``ttl_s`` or raise :class:`LeaseHeld` (or :class:`NotFound`)."""
    now = utcnow()
    query = _HOLDER if tenant_id is None else _HOLDER.where(_WORKFLOWS.c.tenant_id == tenant_id)
    with store.begin() as conn:
        row = conn.execute(query, {"wf": workflow_id}).first()
        if row is None:
            raise NotFound("workflow", workflow_id, hint="list workflows with `nyxnb list`")
        holder, expires = row[0], aware(row[1])
        free = holder in (None, owner) or expires is None or expires < now
        if not free and not holder_is_dead(holder):
            left = (expires - now).total_seconds() if expires else 0.0
            raise LeaseHeld(workflow_id, holder or "?", left)
        expires_at = now + timedelta(seconds=ttl_s)
        conn.execute(_TAKE, {"wf": workflow_id, "owner": owner, "expires": expires_at})


def renew(store: Database, workflow_id: str, owner: str, ttl_s: float = TTL_S) -> bool:
    """Extend the lease by ``ttl_s``; False if it was lost."""
    expires = utcnow() + timedelta(seconds=ttl_s)
    with store.begin() as conn:
        result = conn.execute(_RENEW, {"wf": workflow_id, "owner": owner, "expires": expires})
        return bool(result.rowcount)


def release(store: Database, workflow_id: str, owner: str) -> None:
    """Give the lease up (no-op if someone else holds it)."""
    with store.begin() as conn:
        conn.execute(_RELEASE, {"wf": workflow_id, "owner": owner})


_WORKFLOWS: Table = Workflow.__table__  # type: ignore[assignment]
# Built once, on the table (not the ORM entity): it runs in every write transaction of a run.
_FENCE = (
    select(_WORKFLOWS.c.lease_owner)
    .where(_WORKFLOWS.c.id == bindparam("workflow_id"))
    .with_for_update(read=True)
)


# every run takes its lease once: built once, on the table (not the ORM entity)
_THE_WORKFLOW = _WORKFLOWS.c.id == bindparam("wf")
_HOLDER = (
    select(_WORKFLOWS.c.lease_owner, _WORKFLOWS.c.lease_expires_at)
    .where(_THE_WORKFLOW)
    .with_for_update()
)
_TAKE = (
    update(_WORKFLOWS)
    .where(_THE_WORKFLOW)
    .values(lease_owner=bindparam("owner"), lease_expires_at=bindparam("expires"))
)
_HELD_BY = and_(_THE_WORKFLOW, _WORKFLOWS.c.lease_owner == bindparam("owner"))
# renewed every HEARTBEAT_S of every run: built once, on the table
_RENEW = update(_WORKFLOWS).where(_HELD_BY).values(lease_expires_at=bindparam("expires"))
_RELEASE = update(_WORKFLOWS).where(_HELD_BY).values(lease_owner=None, lease_expires_at=None)


def check_fence(conn: Connection, workflow_id: str, owner: str) -> None:
    """Raise :class:`LeaseLost` unless ``owner`` still holds the lease (inside a write)."""
    if conn.execute(_FENCE, {"workflow_id": workflow_id}).scalar() != owner:
        raise LeaseLost(workflow_id)
