"""SQLAlchemy 2.0 ORM tables.  Table names are a contract (see DESIGN.md); columns may grow.

Every tenant-owned table derives from :class:`TenantOwned` and carries ``tenant_id``; the
tenant-scoped sessions of :mod:`nyxnb.store` filter on it.  Primary keys are string UUIDs so rows
travel across tenants and databases without sequences.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, overload

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship


class Status(StrEnum):
    """The status of a workflow, step or item.  The values are a contract shared with users'
    SQL; a ``StrEnum`` member equals its string, so rows read back compare equal."""

    PENDING = "pending"
    QUEUED = "queued"  # a workflow submitted, waiting for a worker (nyxnb.engine.workers.queue)
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"


# The module-level names every caller already uses: aliases of the members.
PENDING, QUEUED, RUNNING = Status.PENDING, Status.QUEUED, Status.RUNNING
COMPLETED, FAILED, PAUSED = Status.COMPLETED, Status.FAILED, Status.PAUSED
STEP_STATUSES = (PENDING, RUNNING, COMPLETED, FAILED)
WORKFLOW_STATUSES = (PENDING, QUEUED, RUNNING, COMPLETED, FAILED, PAUSED)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    """A fresh time-ordered UUID string primary key (the version 7 layout of RFC 9562).

    48 bits of Unix milliseconds, 12 bits of the millisecond's fraction (the RFC's method 3),
    then 62 random bits: new rows land together at the end of each primary-key index, so a
    fan-out's commit touches a few pages, where random (version 4) ids touched a page per row and
    the cost of a write grew with the table.  Within a process the ids only increase, so rows
    written in one statement with one ``created_at`` (a call's attempts) keep their order by id.
    """
    global _last_stamp
    now = time.time_ns()
    stamp = (now // 1_000_000) << 12 | (now % 1_000_000) * 4096 // 1_000_000
    with _stamp_lock:
        stamp = _last_stamp = max(stamp, _last_stamp + 1)
    value = (
        (stamp >> 12) << 80
        | 0x7 << 76
        | (stamp & 0xFFF) << 64
        | 0b10 << 62
        | int.from_bytes(os.urandom(8), "big") & _RAND_B
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_RAND_B = (1 << 62) - 1
_stamp_lock = threading.Lock()
_last_stamp = 0  # the last id's milliseconds and fraction (60 bits)


def _WHERE_SET(column: str) -> dict[str, Any]:  # noqa: N802 - reads as a clause in Index()
    """A partial index's condition on both backends: rows whose ``column`` is set."""
    condition = text(f'"{column}" IS NOT NULL')
    return {"sqlite_where": condition, "postgresql_where": condition}


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the store uses."""
    return datetime.now(UTC)


@overload
def aware(stamp: datetime) -> datetime: ...
@overload
def aware(stamp: None) -> None: ...
def aware(stamp: datetime | None) -> datetime | None:
    """A stored timestamp as UTC-aware (SQLite returns naive ones)."""
    return stamp.replace(tzinfo=UTC) if stamp is not None and stamp.tzinfo is None else stamp


class Base(DeclarativeBase):
    """Declarative base: string UUID id and created/updated timestamps on every table."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class TenantOwned:
    """Mixin for tables whose rows belong to one tenant."""

    @declared_attr
    def tenant_id(cls) -> Mapped[str]:  # noqa: N805 - declared_attr takes the class
        return mapped_column(
            String(36), ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False
        )


class Tenant(Base):
    __tablename__ = "tenants"
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))


class Project(TenantOwned, Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")

    repositories: Mapped[list[Repository]] = relationship(back_populates="project")
    workflows: Mapped[list[Workflow]] = relationship(back_populates="project")


class Repository(TenantOwned, Base):
    __tablename__ = "repositories"
    __table_args__ = (UniqueConstraint("tenant_id", "owner", "repo"),)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    repo: Mapped[str] = mapped_column(String(200))

    project: Mapped[Project] = relationship(back_populates="repositories")
    code_patterns: Mapped[list[CodePattern]] = relationship(back_populates="repository")


class CodePattern(TenantOwned, Base):
    """A checkable rule: generated code ``must`` or ``must_not`` match ``pattern`` (a regex)."""

    __tablename__ = "code_patterns"
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(64), default="general")
    kind: Mapped[str] = mapped_column(String(16), default="must")
    pattern: Mapped[str] = mapped_column(Text, default="")
    applies_to: Mapped[str] = mapped_column(String(200), default="")

    repository: Mapped[Repository] = relationship(back_populates="code_patterns")


class Persona(Base):
    """A system prompt by name; ``tenant_id`` NULL means global (visible to every tenant)."""

    __tablename__ = "personas"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    tenant_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=True
    )
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(200), default="")
    system_prompt: Mapped[str] = mapped_column(Text)


#: Revision 0014: the tenancy triggers read a parent's tenant here, not from its large row.
_TENANT_OF_ID = "ix_{}_id_tenant_id"


class Workflow(TenantOwned, Base):
    __tablename__ = "workflows"
    __table_args__ = (Index(_TENANT_OF_ID.format("workflows"), "id", "tenant_id"),)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: persona name -> system prompt, frozen when the workflow is created: editing a persona
    #: later never changes (and never re-buys) what this run already did
    personas: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    cloned_from_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="SET NULL"), nullable=True
    )
    # a revision: the workflow this one re-ran with a changed spec (nyxnb.engine.iterate.revisions)
    revision_of: Mapped[str | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="SET NULL"), nullable=True
    )
    experiment_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    variant: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    project: Mapped[Project] = relationship(back_populates="workflows")
    steps: Mapped[list[WorkflowStep]] = relationship(
        back_populates="workflow", order_by="WorkflowStep.order"
    )


_COMPLETED_HAS_OUTPUT = "status <> 'completed' OR output IS NOT NULL"


class WorkflowStep(TenantOwned, Base):
    __tablename__ = "workflow_steps"
    __table_args__ = (
        UniqueConstraint("workflow_id", "order"),
        CheckConstraint(_COMPLETED_HAS_OUTPUT, name="completed_has_output"),
        Index(_TENANT_OF_ID.format("workflow_steps"), "id", "tenant_id"),
    )
    workflow_id: Mapped[str] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), index=True
    )
    order: Mapped[int] = mapped_column("order", Integer)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(32), default="llm")
    persona: Mapped[str | None] = mapped_column(String(100), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(50), nullable=True)
    fallback: Mapped[list[Any]] = mapped_column(JSON, default=list)
    model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    auto_generated: Mapped[bool] = mapped_column(Boolean, default=False)
    input_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reused_from: Mapped[str | None] = mapped_column(String(36), nullable=True)  # old step id
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # judge / pattern-check
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    workflow: Mapped[Workflow] = relationship(back_populates="steps")
    items: Mapped[list[StepItem]] = relationship(back_populates="step", order_by="StepItem.idx")


class StepItem(TenantOwned, Base):
    """One fan-out item; written the moment it completes."""

    __tablename__ = "step_items"
    __table_args__ = (
        UniqueConstraint("step_id", "idx"),
        # progress views count completed items per step while a run writes
        Index("ix_step_items_step_id_status", "step_id", "status"),
        # a dataset row across revisions (rows of typed items have no key: left out)
        Index("ix_step_items_step_id_key", "step_id", "key", **_WHERE_SET("key")),
        CheckConstraint(_COMPLETED_HAS_OUTPUT, name="completed_has_output"),
    )
    step_id: Mapped[str] = mapped_column(ForeignKey("workflow_steps.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(Text, default="")
    input: Mapped[str] = mapped_column(Text, default="")
    input_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider: Mapped[str | None] = mapped_column(String(50), nullable=True)
    # A dataset row (items_from: {path|sql, key}): its key and its columns, copied at creation.
    key: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Item claims of a shared fan-out (engine.workers.claims): holder, lease end, fencing token.
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claim_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    claim_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    step: Mapped[WorkflowStep] = relationship(back_populates="items")


class Worker(Base):
    """A live ``nyxnb worker`` process (its row goes when it exits; a stale heartbeat = dead)."""

    __tablename__ = "workers"
    owner: Mapped[str] = mapped_column(String(200), unique=True)  # its lease/claim token
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    tenant_filter: Mapped[str | None] = mapped_column(String(36), nullable=True)  # --tenant
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claims: Mapped[int] = mapped_column(Integer, default=0)  # items it holds right now
    workflow_id: Mapped[str | None] = mapped_column(String(36), nullable=True)  # leading


class LlmCall(TenantOwned, Base):
    """One provider attempt (successful, failed or served from cache)."""

    __tablename__ = "llm_calls"
    __table_args__ = (
        # only batched calls have a batch: the live calls' rows (nearly all) stay out of it
        Index("ix_llm_calls_batch_id", "batch_id", **_WHERE_SET("batch_id")),
    )
    workflow_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), index=True, nullable=True
    )
    # SET NULL: the cost ledger outlives a regenerated step.
    step_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflow_steps.id", ondelete="SET NULL"), index=True, nullable=True
    )
    item_idx: Mapped[int | None] = mapped_column(Integer, nullable=True)
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100), default="")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | error | cached
    error_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_input_tokens: Mapped[int] = mapped_column(Integer, default=0)  # prompt-cache reads
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    batch_id: Mapped[str | None] = mapped_column(String(120), nullable=True)
    service_tier: Mapped[str] = mapped_column(String(16), default="live")  # live | batch
    # the provider's tier it was served at: flex | priority | default (None: the API has none)
    api_tier: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # thinking/reasoning tokens, a part of output_tokens (priced as output)
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    thinking: Mapped[str | None] = mapped_column(Text, nullable=True)  # keep_thinking: true


class BatchState(StrEnum):
    """The state of a provider batch row (``provider_batches.state``); ``submitting``, ``open``
    and ``canceling`` (a cancel was asked, the results are not read yet) are live batches."""

    SUBMITTING = "submitting"
    OPEN = "open"
    CANCELING = "canceling"
    ENDED = "ended"
    CANCELED = "canceled"


BATCH_SUBMITTING, BATCH_OPEN, BATCH_CANCELING = (
    BatchState.SUBMITTING,
    BatchState.OPEN,
    BatchState.CANCELING,
)
BATCH_ENDED, BATCH_CANCELED = BatchState.ENDED, BatchState.CANCELED
BATCH_LIVE_STATES = (BATCH_SUBMITTING, BATCH_OPEN, BATCH_CANCELING)


class ProviderBatch(TenantOwned, Base):
    """One batch submitted to a provider's batch API; committed before its results are awaited."""

    __tablename__ = "provider_batches"
    workflow_id: Mapped[str] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), index=True
    )
    step_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflow_steps.id", ondelete="SET NULL"), index=True, nullable=True
    )
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100), default="")
    batch_id: Mapped[str | None] = mapped_column(String(120), nullable=True, index=True)
    custom_ids: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(16), default=BATCH_SUBMITTING)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LlmCache(TenantOwned, Base):
    """Content-addressed response cache; ``id`` is the sha256 of the request (salted by tenant
    unless the spec shares the cache); each row belongs to the tenant whose run wrote it."""

    __tablename__ = "llm_cache"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    stop_reason: Mapped[str] = mapped_column(String(32))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)


class RateBucket(Base):
    """A provider+model's rate budget shared by every process on this store (not tenant-owned:
    a provider key's limit is the key's, whoever runs).  ``id`` is ``provider:model:kind``
    (kind ``requests`` or ``tokens``); ``level`` is the budget free at ``refilled_at`` (unix s).
    """

    __tablename__ = "rate_buckets"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    per_min: Mapped[float] = mapped_column(Float)
    level: Mapped[float] = mapped_column(Float)
    refilled_at: Mapped[float] = mapped_column(Float)


class ProjectNote(TenantOwned, Base):
    __tablename__ = "project_notes"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, default="")


class ProjectSync(TenantOwned, Base):
    __tablename__ = "project_syncs"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    source: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), default="ok")
    summary: Mapped[str] = mapped_column(Text, default="")
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Consolidation(TenantOwned, Base):
    __tablename__ = "consolidations"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    summary: Mapped[str] = mapped_column(Text, default="")


class WorkflowInsight(TenantOwned, Base):
    __tablename__ = "workflow_insights"
    __table_args__ = (Index("ix_workflow_insights_workflow_id", "workflow_id"),)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    workflow_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="SET NULL"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(64), default="observation")
    content: Mapped[str] = mapped_column(Text)


class TenantMove(Base):
    """Audit row of a tenant migration: plan, resolutions and counts; reversible."""

    __tablename__ = "tenant_moves"
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    source_tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    target_tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reversed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def tenant_owned_models() -> list[type[Base]]:
    """Every mapped class that carries a ``tenant_id`` column (personas included)."""
    return [
        m.class_
        for m in Base.registry.mappers
        if "tenant_id" in m.columns and m.class_ is not TenantMove
    ]
