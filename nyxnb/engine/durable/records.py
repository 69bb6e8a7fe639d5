"""The engine's writes: each is one short transaction, O(1) per item, never rewriting an array."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, Update, bindparam, delete, insert, select, update

from nyxnb.engine.durable import cache
from nyxnb.engine.durable.rows import StepRow
from nyxnb.engine.outcomes import Attempt, ChainResult
from nyxnb.store.database import Database
from nyxnb.store.models import (
    BATCH_CANCELED,
    BATCH_CANCELING,
    BATCH_LIVE_STATES,
    BATCH_SUBMITTING,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    LlmCall,
    ProviderBatch,
    StepItem,
    Workflow,
    WorkflowStep,
    new_id,
    utcnow,
)

STEPS: Table = WorkflowStep.__table__  # type: ignore[assignment]
ITEMS: Table = StepItem.__table__  # type: ignore[assignment]
CALLS: Table = LlmCall.__table__  # type: ignore[assignment]
WORKFLOWS: Table = Workflow.__table__  # type: ignore[assignment]


INSERT_CALLS = insert(CALLS)
_SETTLE = delete(CALLS).where(CALLS.c.id.in_(bindparam("sent_ids", expanding=True)))


def _stamp(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "updated_at": utcnow()}


def attempt_rows(
    attempts: Sequence[Attempt],
    *,
    tenant_id: str,
    workflow_id: str,
    step_id: str | None,
    item_idx: int | None,
) -> list[dict[str, Any]]:
    """One ``llm_calls`` row per attempt (``step_id`` None: a call of no step, e.g. a digest)."""
    now = utcnow()
    # vars() not asdict(): this runs once per call on the hot path and needs no deep copy
    return [
        {
            **vars(a),
            "id": new_id(),
            "tenant_id": tenant_id,
            "workflow_id": workflow_id,
            "step_id": step_id,
            "item_idx": item_idx,
            "created_at": now,
            "updated_at": now,
        }
        for a in attempts
    ]


def record_attempts(
    conn: Connection, step: StepRow, attempts: Sequence[Attempt], item_idx: int | None
) -> None:
    """Insert one ``llm_calls`` row per attempt made for a step (or one of its items)."""
    if attempts:
        conn.execute(INSERT_CALLS, step_attempt_rows(step, attempts, item_idx))


def step_attempt_rows(
    step: StepRow, attempts: Sequence[Attempt], item_idx: int | None
) -> list[dict[str, Any]]:
    """``llm_calls`` rows for attempts made for a step (or one of its items)."""
    return attempt_rows(
        attempts,
        tenant_id=step.tenant_id,
        workflow_id=step.workflow_id,
        step_id=step.id,
        item_idx=item_idx,
    )


SENT = "sent"  # an attempt recorded before its call; completed (replaced) by its real rows


def sent_row(
    step: StepRow, item_idx: int | None, provider: str, model: str, usd: float, tier: str = "live"
) -> dict[str, Any]:
    """The ``llm_calls`` row written before a call (``outcome='sent'``, cost estimated high).

    A process killed while the call is in flight leaves it behind, so the ledger (and
    ``max_cost_usd``) never counts less than was paid.  Same keys as every attempt row: rows
    of one executemany must name the same columns.  A batch request's (``tier='batch'``) is
    written with its batch's row and stays until the item's result is ingested.
    """
    attempt = Attempt(provider, model, 1, SENT, cost_usd=usd, service_tier=tier)
    return step_attempt_rows(step, [attempt], item_idx)[0]


def settle_sent(conn: Connection, sent_ids: Sequence[str]) -> None:
    if sent_ids:
        conn.execute(_SETTLE, {"sent_ids": list(sent_ids)})


def _remember(conn: Connection, step: StepRow, result: ChainResult) -> None:
    if result.cache_key and not result.from_cache:
        cache.store_answer(conn, step.tenant_id, result.cache_key, result.completion)


def update_workflow(store: Database, workflow_id: str, **values: Any) -> None:
    """Set columns of one workflow."""
    with store.begin() as conn:
        conn.execute(update(WORKFLOWS).where(WORKFLOWS.c.id == workflow_id).values(_stamp(values)))


def update_step(store: Database, step_id: str, **values: Any) -> None:
    """Set columns of one step."""
    with store.begin() as conn:
        conn.execute(update(STEPS).where(STEPS.c.id == step_id).values(_stamp(values)))


def complete_step(
    store: Database,
    step: StepRow,
    output: str,
    input_hash: str,
    result: ChainResult | None = None,
    sent_id: str | None = None,
) -> None:
    """Mark a step completed with its output, ledger rows and cache entry, atomically."""
    if output is None:  # the invariant the original system broke
        raise ValueError("a completed step needs an output")
    with store.begin() as conn:
        settle_sent(conn, [sent_id] if sent_id else [])
        if result is not None:
            record_attempts(conn, step, result.attempts, None)
            _remember(conn, step, result)
        conn.execute(
            update(STEPS)
            .where(STEPS.c.id == step.id)
            .values(
                _stamp(
                    {
                        "status": COMPLETED,
                        "output": output,
                        "input_hash": input_hash,
                        "error": None,
                        "reused_from": None,  # executed in this run, not taken over
                        "completed_at": utcnow(),
                    }
                )
            )
        )


def reset_running_steps(store: Database, workflow_id: str) -> None:
    """Put steps left ``running`` by an interrupted run back to ``pending``."""
    with store.begin() as conn:
        conn.execute(
            update(STEPS)
            .where(STEPS.c.workflow_id == workflow_id, STEPS.c.status == RUNNING)
            .values(_stamp({"status": PENDING}))
        )


def fail_step(
    store: Database,
    step: StepRow,
    error: str,
    attempts: Sequence[Attempt] = (),
    item_idx: int | None = None,
    sent_id: str | None = None,
) -> None:
    """Mark a step failed (and record the attempts that failed)."""
    failed = update(STEPS).where(STEPS.c.id == step.id)
    record_failure(store, step, failed, error, attempts, item_idx, sent_id)


def record_failure(
    store: Database,
    step: StepRow,
    failed: Update,
    error: str,
    attempts: Sequence[Attempt],
    item_idx: int | None,
    sent_id: str | None,
) -> None:
    """One transaction: settle the call's 'sent' row, record its attempts, and mark the row
    ``failed`` selects (a step or an item) failed with ``error``."""
    with store.begin() as conn:
        settle_sent(conn, [sent_id] if sent_id else [])
        record_attempts(conn, step, attempts, item_idx)
        conn.execute(failed.values(_stamp({"status": FAILED, "error": error})))


def load_steps(store: Database, workflow_id: str) -> list[StepRow]:
    """Every step of a workflow, in order."""
    with store.reading() as conn:
        return [
            StepRow.from_mapping(r)
            for r in conn.execute(
                select(STEPS).where(STEPS.c.workflow_id == workflow_id).order_by(STEPS.c.order)
            ).mappings()
        ]


def replace_generated_steps(
    store: Database, workflow_id: str, rows: Sequence[dict[str, Any]]
) -> None:
    """Swap the workflow's generated steps for ``rows`` (ledger rows survive: SET NULL)."""
    with store.begin() as conn:
        conn.execute(
            delete(STEPS).where(
                STEPS.c.workflow_id == workflow_id, STEPS.c.auto_generated.is_(True)
            )
        )
        if rows:
            conn.execute(insert(STEPS), list(rows))


BATCHES: Table = ProviderBatch.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class BatchRow:
    """One ``provider_batches`` row, as the batch executor reads it."""

    id: str
    provider: str
    model: str
    batch_id: str | None
    custom_ids: tuple[str, ...]
    state: str
    submitted_at: datetime | None


def open_batches(store: Database, step_id: str) -> list[BatchRow]:
    """The step's live batches (submitting or open), oldest first."""
    query = (
        select(BATCHES)
        .where(BATCHES.c.step_id == step_id, BATCHES.c.state.in_(BATCH_LIVE_STATES))
        .order_by(BATCHES.c.created_at)
    )
    with store.reading() as conn:
        return [
            BatchRow(
                r["id"],
                r["provider"],
                r["model"],
                r["batch_id"],
                tuple(r["custom_ids"] or ()),
                r["state"],
                r["submitted_at"],
            )
            for r in conn.execute(query).mappings()
        ]


def insert_batch(
    store: Database,
    step: StepRow,
    provider: str,
    model: str,
    custom_ids: Sequence[str],
    sent: Sequence[dict[str, Any]] = (),
) -> str:
    """Commit a ``submitting`` batch row before the provider is asked; returns its row id.

    ``sent``: the ``sent`` ledger rows of its requests (:func:`sent_row`), in the same commit.
    """
    now, row_id = utcnow(), new_id()
    with store.begin() as conn:
        if sent:
            conn.execute(INSERT_CALLS, list(sent))
        conn.execute(
            insert(BATCHES).values(
                id=row_id,
                tenant_id=step.tenant_id,
                workflow_id=step.workflow_id,
                step_id=step.id,
                provider=provider,
                model=model,
                custom_ids=list(custom_ids),
                state=BATCH_SUBMITTING,
                counts={},
                created_at=now,
                updated_at=now,
            )
        )
    return row_id


def update_batch(store: Database, row_id: str, **values: Any) -> None:
    """Set columns of one ``provider_batches`` row."""
    with store.begin() as conn:
        conn.execute(update(BATCHES).where(BATCHES.c.id == row_id).values(_stamp(values)))


def cancel_batch(store: Database, row_id: str, sent_ids: Sequence[str]) -> None:
    """A batch that was never created (or not found): ``canceled``, its 'sent' rows taken back."""
    with store.begin() as conn:
        settle_sent(conn, sent_ids)
        conn.execute(
            update(BATCHES)
            .where(BATCHES.c.id == row_id)
            .values(_stamp({"state": BATCH_CANCELED, "ended_at": utcnow()}))
        )


def batch_sent_ids(store: Database, step_id: str) -> dict[int, str]:
    """Item index -> id of its batch request's 'sent' row, for a step (settled on ingest)."""
    query = select(CALLS.c.item_idx, CALLS.c.id).where(
        CALLS.c.step_id == step_id, CALLS.c.outcome == SENT, CALLS.c.service_tier == "batch"
    )
    with store.reading() as conn:
        return {int(idx): str(row_id) for idx, row_id in conn.execute(query)}


def batch_state(store: Database, row_id: str) -> str | None:
    """The ``state`` of one ``provider_batches`` row (None if it is gone)."""
    with store.reading() as conn:
        state = conn.scalar(select(BATCHES.c.state).where(BATCHES.c.id == row_id))
    return None if state is None else str(state)


def mark_canceling(store: Database, workflow_id: str, batch_id: str) -> None:
    """A cancel was asked for a live batch: its row says ``canceling`` until it is ingested."""
    query = update(BATCHES).where(
        BATCHES.c.workflow_id == workflow_id,
        BATCHES.c.batch_id == batch_id,
        BATCHES.c.state.in_(BATCH_LIVE_STATES),
    )
    with store.begin() as conn:
        conn.execute(query.values(_stamp({"state": BATCH_CANCELING})))


def record_calls(
    store: Database, step: StepRow, attempts: Sequence[Attempt], item_idx: int | None
) -> None:
    """Insert ledger rows on their own (a batch item that errored or expired)."""
    with store.begin() as conn:
        record_attempts(conn, step, attempts, item_idx)
