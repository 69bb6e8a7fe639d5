"""Read-side summaries of workflows: steps, items, and token/cost totals from ``llm_calls``.

:func:`workflow_summary` returns a :class:`WorkflowSummary` (frozen dataclasses all the way
down) that the notebook views, the CLI (``nyxnb show``, ``--json`` via :meth:`~WorkflowSummary.
to_dict`) and the widgets read by attribute. It also says whether anything still runs the
workflow: a workflow whose run lease expired with no runner is *interrupted*
(:attr:`WorkflowSummary.shown_status`), whatever its stored status says, so no view calls a dead
run "running".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from nyxnb.spec import WorkflowSpec
from nyxnb.store.database import Store
from nyxnb.store.holders import TTL_S, holder_is_dead
from nyxnb.store.models import (
    BATCH_LIVE_STATES,
    COMPLETED,
    FAILED,
    PAUSED,
    RUNNING,
    LlmCall,
    Project,
    ProviderBatch,
    StepItem,
    Tenant,
    Workflow,
    WorkflowStep,
    aware,
    utcnow,
)

#: What every view shows for a workflow whose lease expired with nobody running it.
INTERRUPTED = "interrupted"
#: How long past its expiry a lease must be before the run counts as dead: a live runner renews
#: every ~1.5 s, but a busy store can delay a renewal by seconds (seen with SQLite under load).
GRACE_S = 10.0
_ENDED = (COMPLETED, FAILED, PAUSED)


@dataclass(frozen=True)
class Totals:
    """Provider calls of a workflow (or of one step or provider): counts, tokens and cost."""

    calls: int = 0
    ok: int = 0
    errors: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reasoning_tokens: int = 0  # thinking tokens, a part of output_tokens


@dataclass(frozen=True)
class ProviderTotals(Totals):
    """:class:`Totals` of one provider."""

    provider: str = ""


@dataclass(frozen=True)
class ItemSummary:
    """One fan-out item."""

    idx: int
    heading: str
    status: str
    provider: str | None
    output: str | None
    error: str | None


@dataclass(frozen=True)
class StepSummary:
    """One step: definition, status, item counts, tokens and cost (and its items, if read)."""

    order: int
    name: str
    type: str
    persona: str | None
    provider: str | None
    fallback: tuple[Any, ...]
    status: str
    auto_generated: bool
    error: str | None
    prompt: str
    output: str | None
    score: float | None
    reused_from: str | None
    items_total: int
    items_done: int
    claims: dict[str, int]  # open item claims per worker (a shared fan-out: who holds what)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reasoning_tokens: int = 0  # thinking tokens, a part of output_tokens
    items: tuple[ItemSummary, ...] | None = None  # None: not read (``with_items=False``)


@dataclass(frozen=True)
class BatchSummary:
    """A provider batch as shown: provider, id, state, the provider's counts, age."""

    step: str | None
    order: int | None
    provider: str
    model: str
    batch_id: str | None
    state: str
    live: bool
    items: int
    done: int
    counts: dict[str, int]
    submitted_at: datetime | None
    ended_at: datetime | None
    age_s: float | None


@dataclass(frozen=True)
class WorkflowSummary:
    """A workflow with its steps, batches and ledger totals, and whether anything runs it."""

    id: str
    name: str
    status: str  # as stored; :attr:`shown_status` is what views show
    error: str | None
    lease_owner: str | None  # the worker (or process) holding the run's lease
    lease_expires_at: datetime | None
    tenant: str
    project: str
    cloned_from_id: str | None
    revision_of: str | None
    experiment_id: str | None
    variant: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    steps: tuple[StepSummary, ...] = ()
    batches: tuple[BatchSummary, ...] = ()
    totals: Totals = field(default_factory=Totals)
    by_provider: tuple[ProviderTotals, ...] = ()
    interrupted_since: datetime | None = None  # set: no runner since then (see :func:`dead_since`)
    total_steps: int = 0  # generated steps included, counted from the spec before they exist
    batch_fallback: str = ""  # what failed batch items do: live | resubmit (from the spec)

    @property
    def shown_status(self) -> str:
        """The status every view shows: ``interrupted`` for a dead run, else the stored one."""
        return INTERRUPTED if self.interrupted else self.status

    @property
    def interrupted(self) -> bool:
        """The run's lease expired and nothing runs it (stored status aside)."""
        return self.interrupted_since is not None

    @property
    def note(self) -> str:
        """``interrupted: no runner since 14:02:31; resume with `nyxnb resume WF``` (or "")."""
        return interrupted_note(self.id, self.interrupted_since) if self.interrupted else ""

    def step(self, name: str) -> StepSummary:
        """The step called ``name`` (KeyError if none)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (``nyxnb show --json``): ``status`` is the shown status."""
        data = asdict(self)
        data |= {"status": self.shown_status, "stored_status": self.status, "note": self.note}
        for step in data["steps"]:
            if step["items"] is None:
                del step["items"]
        return data


def dead_since(
    status: str, lease_owner: str | None, lease_expires_at: datetime | None,
    started_at: datetime | None, now: datetime | None = None,
) -> datetime | None:  # fmt: skip
    """When a workflow's runner went away, or None while something runs it (or it ended).

    Dead: it says ``running`` (or a lease was taken) but the lease expired (``GRACE_S`` ago) or
    was never there. A runner renews its lease every ~1.5 s, so such a lease means nothing runs
    it. A holder that is a process of this host is asked directly: a killed kernel or CLI run
    is dead at once, since its last renewal (a runner on another host may merely be late).
    """
    if status in _ENDED or (status != RUNNING and not lease_owner):
        return None
    expires = aware(lease_expires_at)
    if lease_owner and holder_is_dead(lease_owner):
        return expires - timedelta(seconds=TTL_S) if expires is not None else (now or utcnow())
    if expires is not None and expires + timedelta(seconds=GRACE_S) >= (now or utcnow()):
        return None
    since = expires or aware(started_at)
    return since or (now or utcnow())


def interrupted_note(workflow_id: str, since: datetime | None) -> str:
    """The one line every view shows for a dead run."""
    when = f" since {since.astimezone():%H:%M:%S}" if since is not None else ""
    return f"interrupted: no runner{when}; resume with `nyxnb resume {workflow_id}`"


@dataclass(frozen=True)
class WorkflowRow:
    """One line of :func:`list_workflows`."""

    id: str
    name: str
    status: str  # shown: ``interrupted`` for a dead run
    tenant: str
    project: str
    created_at: datetime | None
    finished_at: datetime | None
    revision_of: str | None
    variant: str | None
    stored_status: str
    note: str = ""


_TOTAL_COLS = (
    func.count().label("calls"),
    func.sum(case((LlmCall.outcome == "ok", 1), else_=0)).label("ok"),
    func.sum(case((LlmCall.outcome == "error", 1), else_=0)).label("errors"),
    func.sum(case((LlmCall.cached.is_(True), 1), else_=0)).label("cached"),
    func.coalesce(func.sum(LlmCall.input_tokens), 0).label("input_tokens"),
    func.coalesce(func.sum(LlmCall.output_tokens), 0).label("output_tokens"),
    func.coalesce(func.sum(LlmCall.cost_usd), 0.0).label("cost_usd"),
    func.coalesce(func.sum(LlmCall.reasoning_tokens), 0).label("reasoning_tokens"),
)


def _totals(store: Store, workflow_id: str, *by: Any) -> list[tuple[Any, Totals]]:
    """Ledger totals of a workflow, grouped ``by`` columns: (group key, totals) pairs."""
    query = select(*by, *_TOTAL_COLS).where(LlmCall.workflow_id == workflow_id)
    if by:
        query = query.group_by(*by).order_by(*by)
    out = []
    with store.reading() as conn:
        for row in conn.execute(query):
            *key, calls, ok, errors, cached, tin, tout, cost, reasoning = row
            n = [int(x or 0) for x in (calls, ok, errors, cached, tin, tout, reasoning)]
            totals = Totals(
                calls=n[0], ok=n[1], errors=n[2], cached=n[3], input_tokens=n[4],
                output_tokens=n[5], cost_usd=float(cost or 0.0), reasoning_tokens=n[6],
            )  # fmt: skip
            out.append((key[0] if key else None, totals))
    return out


def workflow_summary(
    store: Store, workflow_id: str, *, tenant_id: str | None = None, with_items: bool = True
) -> WorkflowSummary:
    """A workflow with its steps (item counts, tokens, cost), items and ledger totals."""
    with store.session(tenant_id, read_only=True) as s:
        wf = s.get_one(Workflow, workflow_id)
        project = s.get_one(Project, wf.project_id)
        tenant = s.get_one(Tenant, wf.tenant_id)
        steps = s.scalars(
            select(WorkflowStep)
            .where(WorkflowStep.workflow_id == wf.id)
            .order_by(WorkflowStep.order)
        ).all()
        items = s.scalars(
            select(StepItem)
            .join(WorkflowStep)
            .where(WorkflowStep.workflow_id == wf.id)
            .order_by(WorkflowStep.order, StepItem.idx)
        ).all()
        batches = s.scalars(
            select(ProviderBatch)
            .where(ProviderBatch.workflow_id == wf.id)
            .order_by(ProviderBatch.created_at)
        ).all()
    per_step = dict(_totals(store, workflow_id, LlmCall.step_id))
    by_id = {st.id: st for st in steps}
    by_step: dict[str, list[StepItem]] = {}
    for item in items:
        by_step.setdefault(item.step_id, []).append(item)
    whole, (expected, fallback) = _totals(store, workflow_id), _spec_facts(wf.spec)
    return WorkflowSummary(
        id=wf.id,
        name=wf.name,
        status=wf.status,
        error=wf.error,
        lease_owner=wf.lease_owner,
        lease_expires_at=aware(wf.lease_expires_at),
        tenant=tenant.slug,
        project=project.name,
        cloned_from_id=wf.cloned_from_id,
        revision_of=wf.revision_of,
        experiment_id=wf.experiment_id,
        variant=wf.variant,
        created_at=aware(wf.created_at),
        started_at=aware(wf.started_at),
        finished_at=aware(wf.finished_at),
        steps=tuple(
            _step(st, by_step.get(st.id, []), per_step.get(st.id), with_items) for st in steps
        ),
        batches=tuple(_batch(b, by_id) for b in batches),
        totals=whole[0][1] if whole else Totals(),
        by_provider=tuple(
            ProviderTotals(**asdict(t), provider=str(p))
            for p, t in _totals(store, workflow_id, LlmCall.provider)
        ),
        interrupted_since=dead_since(wf.status, wf.lease_owner, wf.lease_expires_at, wf.started_at),
        total_steps=max(len(steps), expected),
        batch_fallback=fallback,
    )


def _spec_facts(spec: dict[str, Any] | None) -> tuple[int, str]:
    """The spec's step count (generated steps included) and batch fallback; (0, "") if the
    stored spec no longer parses."""
    try:
        parsed = WorkflowSpec.model_validate(spec or {})
        return parsed.expected_steps(), parsed.defaults.batch_fallback
    except (ValueError, StopIteration):  # pydantic's ValidationError is a ValueError
        return 0, ""


def _step(
    step: WorkflowStep, items: list[StepItem], totals: Totals | None, with_items: bool
) -> StepSummary:
    totals = totals or Totals()
    return StepSummary(
        order=step.order,
        name=step.name,
        type=step.type,
        persona=step.persona,
        provider=step.provider,
        fallback=tuple(step.fallback or ()),
        status=step.status,
        auto_generated=step.auto_generated,
        error=step.error,
        prompt=step.prompt,
        output=step.output,
        score=step.score,
        reused_from=step.reused_from,
        items_total=len(items),
        items_done=sum(i.status == COMPLETED for i in items),
        claims=_claims(items),
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cost_usd=totals.cost_usd,
        reasoning_tokens=totals.reasoning_tokens,
        items=tuple(
            ItemSummary(i.idx, i.heading, i.status, i.provider, i.output, i.error) for i in items
        )
        if with_items
        else None,
    )


def _batch(batch: ProviderBatch, steps: dict[str, WorkflowStep]) -> BatchSummary:
    """A provider batch as shown: provider, id, state, provider counts, age."""
    step = steps.get(batch.step_id or "")
    counts = {str(k): int(v) for k, v in (batch.counts or {}).items()}
    submitted = aware(batch.submitted_at)
    return BatchSummary(
        step=step.name if step is not None else None,
        order=step.order if step is not None else None,
        provider=batch.provider,
        model=batch.model,
        batch_id=batch.batch_id,
        state=batch.state,
        live=batch.state in BATCH_LIVE_STATES,
        items=len(batch.custom_ids or []),
        done=sum(v for k, v in counts.items() if k != "processing"),
        counts=counts,
        submitted_at=submitted,
        ended_at=aware(batch.ended_at),
        age_s=(utcnow() - submitted).total_seconds() if submitted else None,
    )


def _claims(items: list[StepItem]) -> dict[str, int]:
    """Open item claims per worker (a shared fan-out: who holds what)."""
    held: dict[str, int] = {}
    for item in items:
        if item.status == RUNNING and item.claimed_by:
            held[item.claimed_by] = held.get(item.claimed_by, 0) + 1
    return held


def list_workflows(store: Store, *, tenant_id: str | None = None) -> list[WorkflowRow]:
    """Every workflow (of one tenant, if given), newest first; dead runs say ``interrupted``."""
    query = (
        select(
            Workflow.id,
            Workflow.name,
            Workflow.status,
            Tenant.slug.label("tenant"),
            Project.name.label("project"),
            Workflow.created_at,
            Workflow.finished_at,
            Workflow.revision_of,
            Workflow.variant,
            Workflow.lease_owner,
            Workflow.lease_expires_at,
            Workflow.started_at,
        )
        .join(Project, Project.id == Workflow.project_id)
        .join(Tenant, Tenant.id == Workflow.tenant_id)
        .order_by(Workflow.created_at.desc())
    )
    if tenant_id is not None:
        query = query.where(Workflow.tenant_id == tenant_id)
    now, rows = utcnow(), []
    with store.reading() as conn:
        for r in conn.execute(query):
            since = dead_since(r.status, r.lease_owner, r.lease_expires_at, r.started_at, now=now)
            note = interrupted_note(r.id, since) if since else ""
            rows.append(WorkflowRow(
                r.id, r.name, INTERRUPTED if since else r.status, r.tenant, r.project,
                aware(r.created_at), aware(r.finished_at), r.revision_of, r.variant, r.status, note,
            ))  # fmt: skip
    return rows
