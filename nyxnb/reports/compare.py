"""Compare runs step by step: prompt and output (with diffs against the first run), provider,
model, tokens, cost, latency, pattern-check violations and scores.

``compare([A, B, ...])`` takes workflow ids or an experiment id (every variant of it).  A step
a revision took over from its predecessor (``reused``) shows the old output and costs nothing in
the new run.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from nyxnb.errors import NotFound
from nyxnb.reports.rows import RowChanges, row_changes
from nyxnb.store.database import Store, open_store
from nyxnb.store.models import LlmCall, Workflow, WorkflowStep

_VIOLATIONS = re.compile(r"(\d+) violations\.")


@dataclass(frozen=True)
class RunCell:
    """One step of one run."""

    workflow_id: str
    label: str
    status: str
    prompt: str
    output: str | None
    provider: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    calls: int
    reused: bool
    score: float | None
    violations: int | None
    prompt_diff: str = ""  # unified diff against the first run's ("" when equal or first)
    output_diff: str = ""
    reasoning_tokens: int = 0  # thinking tokens, a part of output_tokens


@dataclass(frozen=True)
class CompareRow:
    """One step across every compared run (``cells[i]`` is None where run i lacks the step)."""

    step: str
    type: str
    cells: tuple[RunCell | None, ...]
    #: a dataset fan-out: each run's rows against the first run's, by key (None: not keyed)
    rows: tuple[RowChanges | None, ...] = ()

    @property
    def changed(self) -> bool:
        """True when any run's prompt or output differs from the first run's."""
        return any(c is not None and (c.prompt_diff or c.output_diff) for c in self.cells)


@dataclass(frozen=True)
class Comparison:
    """The table: runs (ids and labels) and one row per step, in step order."""

    workflow_ids: tuple[str, ...]
    labels: tuple[str, ...]
    rows: tuple[CompareRow, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document."""
        return {
            "workflows": [
                {"id": w, "label": lbl}
                for w, lbl in zip(self.workflow_ids, self.labels, strict=True)
            ],
            "steps": [
                {
                    "step": r.step,
                    "type": r.type,
                    "changed": r.changed,
                    "runs": [asdict(c) if c is not None else None for c in r.cells],
                    "rows": [asdict(x) if x is not None else None for x in r.rows],
                }
                for r in self.rows
            ],
        }

    def records(self) -> list[dict[str, Any]]:
        """One flat record per (step, run): the rows of a DataFrame."""
        out = []
        for r in self.rows:
            for c in r.cells:
                if c is not None:
                    out.append({"step": r.step, "type": r.type, **asdict(c)})
        return out


def diff(old: str | None, new: str | None) -> str:
    """A unified diff of two texts ('' when equal)."""
    if (old or "") == (new or ""):
        return ""
    lines = difflib.unified_diff(
        (old or "").splitlines(), (new or "").splitlines(), "first", "this", lineterm="", n=1
    )
    return "\n".join(lines)


def resolve(store: Store, ids: list[str], tenant_id: str | None = None) -> list[str]:
    """Workflow ids for ``ids``: each is a workflow id or an experiment id (all its variants)."""
    out: list[str] = []
    with store.session(tenant_id, read_only=True) as s:
        for given in ids:
            if s.get(Workflow, given) is not None:
                out.append(given)
                continue
            found = list(
                s.scalars(
                    select(Workflow.id)
                    .where(Workflow.experiment_id == given)
                    .order_by(Workflow.created_at, Workflow.variant)
                )
            )
            if not found:
                raise NotFound("workflow or experiment", given, hint="see `nyxnb list`")
            out += found
    return out


def _label(wf: Workflow) -> str:
    return wf.variant or f"{wf.name} {wf.id[:8]}"


def _ledger(
    store: Store, workflow_id: str
) -> dict[str, tuple[int, int, float, float, int, str, int]]:
    """Per step id: tokens in/out, cost, latency, calls, the last model used, reasoning tokens."""
    query = (
        select(
            LlmCall.step_id,
            func.sum(LlmCall.input_tokens),
            func.sum(LlmCall.output_tokens),
            func.sum(LlmCall.cost_usd),
            func.sum(LlmCall.latency_ms),
            func.count(),
            func.max(LlmCall.model),
            func.sum(LlmCall.reasoning_tokens),
        )
        .where(LlmCall.workflow_id == workflow_id)
        .group_by(LlmCall.step_id)
    )
    with store.reading() as conn:
        return {
            r[0]: (
                int(r[1] or 0),
                int(r[2] or 0),
                float(r[3] or 0),
                float(r[4] or 0),
                r[5],
                r[6],
                int(r[7] or 0),
            )
            for r in conn.execute(query)
            if r[0] is not None
        }


def _violations(step: WorkflowStep) -> int | None:
    if step.type != "pattern-check" or step.output is None:
        return None
    found = _VIOLATIONS.search(step.output)
    return int(found.group(1)) if found else None


def _cell(wf: Workflow, step: WorkflowStep, ledger: dict[str, Any]) -> RunCell:
    empty = (0, 0, 0.0, 0.0, 0, None, 0)
    tin, tout, cost, latency, calls, model, reasoning = ledger.get(step.id, empty)
    return RunCell(
        workflow_id=wf.id,
        label=_label(wf),
        status=step.status,
        prompt=step.prompt,
        output=step.output,
        provider=step.provider,
        model=model or step.model,
        input_tokens=tin,
        output_tokens=tout,
        reasoning_tokens=reasoning,
        cost_usd=cost,
        latency_ms=latency,
        calls=calls,
        reused=step.reused_from is not None,
        score=step.score,
        violations=_violations(step),
    )


def _with_diffs(cells: list[RunCell | None]) -> tuple[RunCell | None, ...]:
    base = next((c for c in cells if c is not None), None)
    out: list[RunCell | None] = []
    for c in cells:
        if c is None or base is None or c is base:
            out.append(c)
            continue
        values = {**asdict(c), "prompt_diff": diff(base.prompt, c.prompt)}
        values["output_diff"] = diff(base.output, c.output)
        out.append(RunCell(**values))
    return tuple(out)


def _row_changes(
    store: Store, name: str, step_ids: list[dict[str, str]]
) -> tuple[RowChanges | None, ...]:
    first = step_ids[0].get(name)
    return tuple(
        row_changes(store, first, ids[name]) if first and name in ids and i else None
        for i, ids in enumerate(step_ids)
    )


def build(store: Store, ids: list[str], *, tenant_id: str | None = None) -> Comparison:
    """The comparison of the runs named by ``ids`` (workflow or experiment ids)."""
    workflow_ids = resolve(store, ids, tenant_id)
    names: dict[str, str] = {}
    per_run: list[dict[str, RunCell]] = []
    step_ids: list[dict[str, str]] = []
    labels = []
    with store.session(tenant_id, read_only=True) as s:
        for wid in workflow_ids:
            wf = s.get_one(Workflow, wid)
            labels.append(_label(wf))
            ledger = _ledger(store, wid)
            cells = {}
            for step in wf.steps:
                names.setdefault(step.name, step.type)
                cells[step.name] = _cell(wf, step, ledger)
            per_run.append(cells)
            step_ids.append({step.name: step.id for step in wf.steps})
    rows = tuple(
        CompareRow(
            name,
            kind,
            _with_diffs([run.get(name) for run in per_run]),
            _row_changes(store, name, step_ids) if kind == "fan-out" else (),
        )
        for name, kind in names.items()
    )
    return Comparison(tuple(workflow_ids), tuple(labels), rows)


def compare(
    ids: list[str] | tuple[str, ...] | str,
    *,
    store: Store | str | None = None,
    tenant: str | None = None,
) -> Comparison:
    """Line runs up step by step (workflow ids, or an experiment id for all its variants)."""
    st = store if isinstance(store, Store) else open_store(store)
    given = [ids] if isinstance(ids, str) else list(ids)
    return build(st, given, tenant_id=st.tenant_id(tenant))
