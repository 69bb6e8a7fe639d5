"""Insights from a finished run, written to ``workflow_insights``.

Deterministic facts first (failed and retried calls, fallbacks, cost by step, the slowest items,
pattern-check violations, judge scores), then a digest written by a persona over those facts and
the step outputs.  ``digest()`` replaces the workflow's earlier insights, so it can be re-run.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Table, delete, insert, select

from nyxnb.engine.calls.chain import ProviderPool, complete_with_fallback
from nyxnb.engine.durable import records
from nyxnb.engine.workflows import personas_for
from nyxnb.errors import NotFound, RunError
from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.endpoints import workflow_endpoints
from nyxnb.store.database import Database, Store, open_store
from nyxnb.store.models import (
    COMPLETED,
    FAILED,
    LlmCall,
    Workflow,
    WorkflowInsight,
    WorkflowStep,
    new_id,
    utcnow,
)

INSIGHTS: Table = WorkflowInsight.__table__  # type: ignore[assignment]
DIGEST_PROMPT = """\
Write a short digest (at most 8 bullet points) of this workflow run for the researcher who ran it:
what it produced, what went wrong, what cost the most, and what to try next.

Facts:
{facts}

Step outputs (truncated):
{outputs}"""


@dataclass(frozen=True)
class Insight:
    """One ``workflow_insights`` row: a kind (``fact:*`` or ``digest``) and its text."""

    kind: str
    content: str


def _calls(store: Database, workflow_id: str) -> list[tuple[str | None, LlmCall]]:
    query = (
        select(WorkflowStep.name, LlmCall)
        .outerjoin(WorkflowStep, WorkflowStep.id == LlmCall.step_id)
        .where(LlmCall.workflow_id == workflow_id)
        .order_by(LlmCall.created_at, LlmCall.id)  # one call's attempts share a created_at
    )
    with store.session(read_only=True) as s:
        rows: list[tuple[str | None, LlmCall]] = [(n, c) for n, c in s.execute(query)]
        for _, call in rows:
            s.expunge(call)
    return rows


def _call_facts(calls: list[tuple[str | None, LlmCall]]) -> list[Insight]:
    out = []
    failed = [(n, c) for n, c in calls if c.outcome == "error"]
    kinds = Counter(f"{c.provider}/{c.error_kind}" for _, c in failed)
    detail = f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())})" if kinds else ""
    out.append(Insight("fact:calls", f"{len(calls)} calls, {len(failed)} failed{detail}"))
    per_unit: dict[tuple[str | None, int | None], list[LlmCall]] = defaultdict(list)
    for name, c in calls:
        per_unit[(name, c.item_idx)].append(c)
    retried = [k for k, cs in per_unit.items() if len(cs) > 1]
    fallbacks = [k for k, cs in per_unit.items() if len({c.provider for c in cs}) > 1]
    if retried:
        out.append(
            Insight("fact:retries", f"{len(retried)} steps or items needed more than one call")
        )
    for name, idx in fallbacks:
        chain = " -> ".join(dict.fromkeys(c.provider for c in per_unit[(name, idx)]))
        where = f"{name} item {idx + 1}" if idx is not None else str(name)
        out.append(Insight("fact:fallback", f"{where} fell back: {chain}"))
    cost: dict[str, float] = defaultdict(float)
    for name, c in calls:
        cost[name or "(removed step)"] += c.cost_usd
    ranked = sorted(cost.items(), key=lambda kv: -kv[1])
    out.append(
        Insight("fact:cost", "cost by step: " + ", ".join(f"{n} ${v:.4f}" for n, v in ranked))
    )
    items = sorted((c.latency_ms, n, c.item_idx) for n, c in calls if c.item_idx is not None)
    if items:
        slow = ", ".join(f"{n} item {i + 1} {ms:.0f} ms" for ms, n, i in reversed(items[-3:]))
        out.append(Insight("fact:slowest", f"slowest items: {slow}"))
    return out


def _step_facts(steps: list[WorkflowStep]) -> list[Insight]:
    out = []
    for s in steps:
        if s.type == "pattern-check" and s.output:
            head = s.output.splitlines()[2] if len(s.output.splitlines()) > 2 else s.output
            out.append(Insight("fact:patterns", f"{s.name}: {head.strip()}"))
        if s.type == "judge" and s.score is not None:
            target = (s.config or {}).get("target")
            out.append(Insight("fact:score", f"{s.name} scored {target} {s.score:g}"))
        if s.status == FAILED:
            out.append(Insight("fact:failed", f"{s.name} failed: {(s.error or '')[:200]}"))
    return out


def facts(store: Database, workflow_id: str) -> list[Insight]:
    """The deterministic facts of a run."""
    with store.session(read_only=True) as s:
        wf = s.get(Workflow, workflow_id)
        if wf is None:
            raise NotFound("workflow", workflow_id, hint="list workflows with `nyxnb list`")
        steps = list(wf.steps)
        for step in steps:
            s.expunge(step)
    return _call_facts(_calls(store, workflow_id)) + _step_facts(steps)


async def _write_digest(
    store: Database, wf: Workflow, found: list[Insight], persona: str, chain: list[str]
) -> str:
    steps = records.load_steps(store, wf.id)
    outputs = "\n".join(f"## {s.name}\n{(s.output or '')[:600]}" for s in steps)
    text = "\n".join(f"- {i.content}" for i in found)
    system = personas_for(store, wf.tenant_id).get(persona)
    if system is None:
        raise NotFound("persona", persona, hint="run `nyxnb seed` or pick another persona")
    request = CompletionRequest.of(system, DIGEST_PROMPT.format(facts=text, outputs=outputs))
    pool = ProviderPool()
    pool.endpoints = workflow_endpoints(wf.spec)
    try:
        result = await complete_with_fallback(pool, chain, request)
    finally:
        await pool.aclose()
    rows = records.attempt_rows(
        result.attempts, tenant_id=wf.tenant_id, workflow_id=wf.id, step_id=None, item_idx=None
    )
    with store.begin() as conn:
        conn.execute(insert(records.CALLS), rows)
    return result.completion.text


def _chain(wf: Workflow, provider: str | list[str] | None) -> list[str]:
    defaults = (wf.spec or {}).get("defaults", {})
    if isinstance(provider, str):
        return [provider]
    chain = provider or [defaults.get("provider", "offline"), *defaults.get("fallback", [])]
    return list(dict.fromkeys(chain))


async def adigest(
    store: Database,
    workflow_id: str,
    *,
    tenant_id: str | None = None,
    persona: str = "Athena",
    provider: str | list[str] | None = None,
    llm: bool = True,
) -> list[Insight]:
    """Write the insights of a finished run (the async form; the runner awaits it)."""
    with store.session(tenant_id, read_only=True) as s:
        wf = s.get(Workflow, workflow_id)
        if wf is None:
            raise NotFound("workflow", workflow_id, hint="list workflows with `nyxnb list`")
        s.expunge(wf)
    if wf.status not in (COMPLETED, FAILED):
        raise RunError(f"workflow {workflow_id} is {wf.status}: digest a finished run",
                       hint=f"finish it first: `nyxnb resume {workflow_id}`")  # fmt: skip
    found = facts(store, workflow_id)
    if llm:
        text = await _write_digest(store, wf, found, persona, _chain(wf, provider))
        found.append(Insight("digest", text))
    now = utcnow()
    with store.begin() as conn:
        conn.execute(delete(INSIGHTS).where(INSIGHTS.c.workflow_id == workflow_id))
        conn.execute(insert(INSIGHTS), [
            {"id": new_id(), "tenant_id": wf.tenant_id, "project_id": wf.project_id,
             "workflow_id": wf.id, "kind": i.kind, "content": i.content,
             "created_at": now, "updated_at": now}
            for i in found
        ])  # fmt: skip
    return found


def digest(
    workflow_id: str,
    *,
    store: Store | str | None = None,
    tenant: str | None = None,
    persona: str = "Athena",
    provider: str | list[str] | None = None,
    llm: bool = True,
) -> list[Insight]:
    """Write the insights of a finished run (facts, then an LLM digest unless ``llm=False``).

    Sync, and safe inside a notebook's running loop: the work runs on a thread of its own.
    """
    st = store if isinstance(store, Store) else open_store(store)
    coro = adigest(
        st, workflow_id, tenant_id=st.tenant_id(tenant), persona=persona, provider=provider, llm=llm
    )
    with ThreadPoolExecutor(1, thread_name_prefix="nyxnb-digest") as pool:
        return pool.submit(asyncio.run, coro).result()
