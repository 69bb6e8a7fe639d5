"""Read-side summaries of workflows: steps, items, and token/cost totals from ``llm_calls``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select

from nyxnb.store.database import Store
from nyxnb.store.models import (
    BATCH_LIVE_STATES,
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


def _totals(store: Store, workflow_id: str, by: Any) -> list[dict[str, Any]]:
    cols = [
        func.count().label("calls"),
        func.sum(case((LlmCall.outcome == "ok", 1), else_=0)).label("ok"),
        func.sum(case((LlmCall.outcome == "error", 1), else_=0)).label("errors"),
        func.sum(case((LlmCall.cached.is_(True), 1), else_=0)).label("cached"),
        func.coalesce(func.sum(LlmCall.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(LlmCall.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(LlmCall.reasoning_tokens), 0).label("reasoning_tokens"),
        func.coalesce(func.sum(LlmCall.cost_usd), 0.0).label("cost_usd"),
    ]
    query = select(*by, *cols).where(LlmCall.workflow_id == workflow_id)
    if by:
        query = query.group_by(*by).order_by(*by)
    with store.reading() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def workflow_summary(
    store: Store, workflow_id: str, *, tenant_id: str | None = None, with_items: bool = True
) -> dict[str, Any]:
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
    per_step = {r["step_id"]: r for r in _totals(store, workflow_id, [LlmCall.step_id])}
    by_id = {st.id: st for st in steps}
    by_step: dict[str, list[StepItem]] = {}
    for item in items:
        by_step.setdefault(item.step_id, []).append(item)
    return {
        "id": wf.id,
        "name": wf.name,
        "status": wf.status,
        "error": wf.error,
        "lease_owner": wf.lease_owner,  # the worker (or process) running it now
        "tenant": tenant.slug,
        "project": project.name,
        "cloned_from_id": wf.cloned_from_id,
        "revision_of": wf.revision_of,
        "experiment_id": wf.experiment_id,
        "variant": wf.variant,
        "created_at": wf.created_at,
        "finished_at": wf.finished_at,
        "steps": [
            _step_dict(st, by_step.get(st.id, []), per_step.get(st.id), with_items) for st in steps
        ],
        "batches": [_batch_dict(b, by_id) for b in batches],
        "totals": (_totals(store, workflow_id, []) or [{}])[0],
        "by_provider": _totals(store, workflow_id, [LlmCall.provider]),
    }


def _step_dict(
    step: WorkflowStep, items: list[StepItem], totals: dict[str, Any] | None, with_items: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "order": step.order,
        "name": step.name,
        "type": step.type,
        "persona": step.persona,
        "provider": step.provider,
        "fallback": step.fallback,
        "status": step.status,
        "auto_generated": step.auto_generated,
        "error": step.error,
        "prompt": step.prompt,
        "output": step.output,
        "score": step.score,
        "reused_from": step.reused_from,
        "items_total": len(items),
        "items_done": sum(i.status == "completed" for i in items),
        "claims": _claims(items),
        "input_tokens": (totals or {}).get("input_tokens", 0),
        "output_tokens": (totals or {}).get("output_tokens", 0),
        "reasoning_tokens": (totals or {}).get("reasoning_tokens", 0),  # part of output_tokens
        "cost_usd": float((totals or {}).get("cost_usd", 0.0)),
    }
    if with_items:
        out["items"] = [
            {
                "idx": i.idx,
                "heading": i.heading,
                "status": i.status,
                "provider": i.provider,
                "output": i.output,
                "error": i.error,
            }
            for i in items
        ]
    return out


def _batch_dict(batch: ProviderBatch, steps: dict[str, WorkflowStep]) -> dict[str, Any]:
    """A provider batch as shown: provider, id, state, provider counts, age."""
    step = steps.get(batch.step_id or "")
    counts = {str(k): int(v) for k, v in (batch.counts or {}).items()}
    submitted = aware(batch.submitted_at)
    ended = aware(batch.ended_at)
    return {
        "step": step.name if step is not None else None,
        "order": step.order if step is not None else None,
        "provider": batch.provider,
        "model": batch.model,
        "batch_id": batch.batch_id,
        "state": batch.state,
        "live": batch.state in BATCH_LIVE_STATES,
        "items": len(batch.custom_ids or []),
        "done": sum(v for k, v in counts.items() if k != "processing"),
        "counts": counts,
        "submitted_at": submitted,
        "ended_at": ended,
        "age_s": (utcnow() - submitted).total_seconds() if submitted else None,
    }


def _claims(items: list[StepItem]) -> dict[str, int]:
    """Open item claims per worker (a shared fan-out: who holds what)."""
    held: dict[str, int] = {}
    for item in items:
        if item.status == "running" and item.claimed_by:
            held[item.claimed_by] = held.get(item.claimed_by, 0) + 1
    return held


def list_workflows(store: Store, *, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Every workflow (of one tenant, if given), newest first."""
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
        )
        .join(Project, Project.id == Workflow.project_id)
        .join(Tenant, Tenant.id == Workflow.tenant_id)
        .order_by(Workflow.created_at.desc())
    )
    if tenant_id is not None:
        query = query.where(Workflow.tenant_id == tenant_id)
    with store.reading() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
