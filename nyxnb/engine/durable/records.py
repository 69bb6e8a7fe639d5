"""The engine's writes: each is one short transaction, O(1) per item, never rewriting an array."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from nyxnb.engine.durable import cache
from nyxnb.engine.durable.rows import ItemRow, ItemRows, ItemUpdate, StepRow
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


# Built once: the per-item commit is the engine's hot path.
_COMPLETE_ITEM = (
    update(ITEMS)
    .where(ITEMS.c.step_id == bindparam("b_step"), ITEMS.c.idx == bindparam("b_idx"))
    .values(
        status=bindparam("status"),
        output=bindparam("output"),
        error=bindparam("error"),
        provider=bindparam("provider"),
        updated_at=bindparam("updated_at"),
    )
)
_INSERT_CALLS = insert(CALLS)
#: An item whose input changed (or that failed) goes back to pending with its new input.
_RESET_ITEM = (
    update(ITEMS)
    .where(ITEMS.c.step_id == bindparam("b_step"), ITEMS.c.idx == bindparam("b_idx"))
    .values(
        heading=bindparam("heading"),
        input=bindparam("input"),
        input_hash=bindparam("input_hash"),
        status=PENDING,
        output=None,
        error=None,
        updated_at=bindparam("updated_at"),
    )
)
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
        conn.execute(_INSERT_CALLS, step_attempt_rows(step, attempts, item_idx))


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


def _settle(conn: Connection, sent_ids: Sequence[str]) -> None:
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
        _settle(conn, [sent_id] if sent_id else [])
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
    with store.begin() as conn:
        _settle(conn, [sent_id] if sent_id else [])
        record_attempts(conn, step, attempts, item_idx)
        conn.execute(
            update(STEPS)
            .where(STEPS.c.id == step.id)
            .values(_stamp({"status": FAILED, "error": error}))
        )


def item_rows(
    step: StepRow, idx: int, output: str, result: ChainResult, sent_id: str | None = None
) -> ItemRows:
    """The rows that commit one fan-out item: its ledger rows, cache entry and item update."""
    calls = step_attempt_rows(step, result.attempts, idx)
    key = result.cache_key
    entry = (
        cache.answer_row(step.tenant_id, key, result.completion)
        if key and not result.from_cache
        else None
    )
    item = ItemUpdate(step.id, idx, output, result.provider, utcnow())
    return ItemRows(calls, entry, item, (sent_id,) if sent_id else ())


def write_items(conn: Connection, batch: Sequence[ItemRows]) -> None:
    """Commit a batch of completed items with one executemany per table.

    An item's first live ledger row takes the place of its 'sent' row (:func:`_complete_sent`).
    """
    completed, calls, settled = _split_sent(batch)
    _settle(conn, settled)
    _complete_sent(conn, completed)
    if calls:
        conn.execute(_INSERT_CALLS, calls)
    cache.store_rows(conn, [b.cache for b in batch if b.cache is not None])
    items = [b.item.params() for b in batch if b.item is not None]
    if items:
        conn.execute(_COMPLETE_ITEM, items)


#: Columns a completed row shares with the 'sent' row it replaces: left out of the update, so
#: no index of ``llm_calls`` is touched (a delete and an insert rewrote all five of them).
_SAME_AS_SENT = frozenset({"id", "tenant_id", "workflow_id", "step_id", "item_idx", "batch_id"})


def _split_sent(
    batch: Sequence[ItemRows],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(rows completing a 'sent' row in place, rows to insert, 'sent' ids to delete)."""
    completed: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    settled: list[str] = []
    for b in batch:
        first = b.calls[0] if b.calls and b.settle else None
        if first is not None and first["batch_id"] is None:  # a live call's 'sent' row
            completed.append(_completing(first, b.settle[0]))
            calls.extend(b.calls[1:])
            settled.extend(b.settle[1:])
        else:
            calls.extend(b.calls)
            settled.extend(b.settle)
    return completed, calls, settled


def _completing(row: dict[str, Any], sent_id: str) -> dict[str, Any]:
    # a parameter named like a column would be SET too: the shared columns are left out
    values = {k: v for k, v in row.items() if k not in _SAME_AS_SENT}
    values["sent_id"] = sent_id
    return values


_COMPLETE_SENT: dict[tuple[str, ...], Any] = {}


def _complete_sent(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Turn 'sent' rows into the attempts that completed them (an update by primary key)."""
    if not rows:
        return
    columns = tuple(k for k in rows[0] if k != "sent_id")
    statement = _COMPLETE_SENT.get(columns)
    if statement is None:
        statement = _COMPLETE_SENT[columns] = (
            update(CALLS)
            .where(CALLS.c.id == bindparam("sent_id"))
            .values({c: bindparam(c) for c in columns})
        )
    conn.execute(statement, rows)


def complete_item(
    store: Database, step: StepRow, idx: int, output: str, result: ChainResult
) -> None:
    """Commit one fan-out item in its own transaction."""
    with store.begin() as conn:
        write_items(conn, [item_rows(step, idx, output, result)])


def fail_item(
    store: Database,
    step: StepRow,
    idx: int,
    error: str,
    attempts: Sequence[Attempt],
    sent_id: str | None = None,
) -> None:
    """Mark one fan-out item failed and record its attempts."""
    with store.begin() as conn:
        _settle(conn, [sent_id] if sent_id else [])
        record_attempts(conn, step, attempts, idx)
        conn.execute(
            update(ITEMS)
            .where(ITEMS.c.step_id == step.id, ITEMS.c.idx == idx)
            .values(status=FAILED, error=error, updated_at=utcnow())
        )


def sync_items(
    store: Database, step: StepRow, wanted: Sequence[tuple[str, str, str]]
) -> list[ItemRow]:
    """Make the step's item rows match ``wanted`` (heading, input, hash) and return them.

    Rows whose input is unchanged keep their status and output: a committed item is never
    called again.  Changed rows go back to pending; surplus rows are deleted.  Rows are read
    and written with one statement each way (a 100,000-row dataset is one executemany).
    """
    with store.begin() as conn:
        query = select(ITEMS.c.idx, ITEMS.c.input_hash, ITEMS.c.status)
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(query.where(ITEMS.c.step_id == step.id))}
        conn.execute(delete(ITEMS).where(ITEMS.c.step_id == step.id, ITEMS.c.idx >= len(wanted)))
        now, fresh, changed = utcnow(), [], []
        for idx, (heading, text, digest) in enumerate(wanted):
            row = rows.get(idx)
            if row is None:
                fresh.append(
                    {
                        "id": new_id(),
                        "tenant_id": step.tenant_id,
                        "step_id": step.id,
                        "idx": idx,
                        "heading": heading,
                        "input": text,
                        "input_hash": digest,
                        "status": PENDING,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            elif row[0] != digest or row[1] == FAILED:
                changed.append(
                    {"b_step": step.id, "b_idx": idx, "heading": heading, "input": text}
                    | {"input_hash": digest, "updated_at": now}
                )
        if changed:
            conn.execute(_RESET_ITEM, changed)
        if fresh:
            conn.execute(insert(ITEMS), fresh)
        return _step_items(conn, step.id)


def load_steps(store: Database, workflow_id: str) -> list[StepRow]:
    """Every step of a workflow, in order."""
    with store.reading() as conn:
        return [
            StepRow.from_mapping(r)
            for r in conn.execute(
                select(STEPS).where(STEPS.c.workflow_id == workflow_id).order_by(STEPS.c.order)
            ).mappings()
        ]


def load_items(store: Database, step_id: str, *, full: bool = False) -> list[ItemRow]:
    """Every item row of a step, in order; ``full`` also reads each item's prompt (``input``).

    A dataset row's columns (``data``) are never read here: they are read once, streamed, when
    the prompts are rendered (:func:`iter_dataset_rows`).
    """
    with store.reading() as conn:
        return _step_items(conn, step_id, full)


_LEAN = [c for c in ItemRow.__dataclass_fields__ if c not in ("input", "data")]


def _step_items(conn: Connection, step_id: str, full: bool = False) -> list[ItemRow]:
    cols = [ITEMS.c[name] for name in (_LEAN + ["input"] if full else _LEAN)]
    query = select(*cols).where(ITEMS.c.step_id == step_id).order_by(ITEMS.c.idx)
    return [ItemRow(**r) for r in conn.execute(query).mappings()]


def iter_dataset_rows(
    store: Database, step_id: str
) -> Iterator[tuple[int, str, str | None, dict[str, Any]]]:
    """A dataset step's rows, streamed in order: (idx, heading, key, columns)."""
    query = (
        select(ITEMS.c.idx, ITEMS.c.heading, ITEMS.c.key, ITEMS.c.data)
        .where(ITEMS.c.step_id == step_id)
        .order_by(ITEMS.c.idx)
    )
    with store.reading() as conn:
        for r in conn.execution_options(yield_per=2000).execute(query):
            yield r[0], r[1], r[2], r[3] or {}


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
            conn.execute(_INSERT_CALLS, list(sent))
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
        _settle(conn, sent_ids)
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
