"""A fan-out's item rows: written when the step starts, committed in groups, read back.

The hot path of a run: :func:`write_items` commits a group of completed items (their ledger rows,
cache entries and item updates) with one executemany per table (:mod:`nyxnb.store.bulk`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, literal, select, update

from nyxnb.engine.durable import cache
from nyxnb.engine.durable.records import (
    CALLS,
    INSERT_CALLS,
    ITEMS,
    record_failure,
    settle_sent,
    step_attempt_rows,
)
from nyxnb.engine.durable.rows import ItemRow, ItemRows, ItemUpdate, StepRow
from nyxnb.engine.outcomes import Attempt, ChainResult
from nyxnb.store.bulk import executemany
from nyxnb.store.database import Database
from nyxnb.store.models import FAILED, PENDING, new_id, utcnow

# Built once: the per-item commit is the engine's hot path.
#: One item, by its step and index (``b_step``, ``b_idx``).
THE_ITEM = and_(ITEMS.c.step_id == bindparam("b_step"), ITEMS.c.idx == bindparam("b_idx"))
#: What a completed item's row is set to (the parameters of :meth:`ItemUpdate.params`).
COMPLETED_VALUES: dict[str, Any] = {
    name: bindparam(name) for name in ("status", "output", "error", "provider", "updated_at")
}
_COMPLETE_ITEM = update(ITEMS).where(THE_ITEM).values(COMPLETED_VALUES)
_INSERT_ITEMS = insert(ITEMS)
#: An item whose input changed (or that failed) goes back to pending with its new input.
_RESET_ITEM = (
    update(ITEMS)
    .where(THE_ITEM)
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

    An item's first live ledger row takes the place of its 'sent' row: an update by primary
    key (``_COMPLETE_SENT``) that touches no index of ``llm_calls``.
    """
    completed, calls, settled = _split_sent(batch)
    settle_sent(conn, settled)
    executemany(conn, _COMPLETE_SENT, completed)
    executemany(conn, INSERT_CALLS, calls)
    cache.store_rows(conn, [b.cache for b in batch if b.cache is not None])
    executemany(conn, _COMPLETE_ITEM, [b.item.params() for b in batch if b.item is not None])


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


#: A 'sent' row completed by its attempt: every column of an attempt's row but those shared.
_COMPLETE_SENT = (
    update(CALLS)
    .where(CALLS.c.id == bindparam("sent_id"))
    .values(
        {
            c: bindparam(c)
            for c in (*Attempt.__dataclass_fields__, "created_at", "updated_at")
            if c not in _SAME_AS_SENT
        }
    )
)


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
    failed = update(ITEMS).where(ITEMS.c.step_id == step.id, ITEMS.c.idx == idx)
    record_failure(store, step, failed, error, attempts, idx, sent_id)


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
        now = utcnow()
        fresh: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
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
                        "claim_generation": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            elif row[0] != digest or row[1] == FAILED:
                changed.append(
                    {"b_step": step.id, "b_idx": idx, "heading": heading, "input": text}
                    | {"input_hash": digest, "updated_at": now}
                )
        executemany(conn, _RESET_ITEM, changed)
        executemany(conn, _INSERT_ITEMS, fresh)
        if not rows:  # a new step: the rows are the ones just written (not read back)
            return [
                ItemRow(r["id"], r["idx"], r["heading"], PENDING, None, r["input_hash"])
                for r in fresh
            ]
        return _step_items(conn, step.id)


def load_items(store: Database, step_id: str, *, full: bool = False) -> list[ItemRow]:
    """Every item row of a step, in order; ``full`` also reads each item's prompt (``input``).

    A dataset row's columns (``data``) are never read here: they are read once, streamed, when
    the prompts are rendered (:func:`iter_dataset_rows`).
    """
    with store.reading() as conn:
        return _step_items(conn, step_id, full)


_FIELDS = [c for c in ItemRow.__dataclass_fields__ if c != "data"]


def _step_items(conn: Connection, step_id: str, full: bool = False) -> list[ItemRow]:
    # the columns in the fields' order (built positionally: 100,000 rows are read at once)
    cols = [ITEMS.c[n] if full or n != "input" else literal("").label(n) for n in _FIELDS]
    query = select(*cols).where(ITEMS.c.step_id == step_id).order_by(ITEMS.c.idx)
    return [ItemRow(*r) for r in conn.execute(query)]


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
