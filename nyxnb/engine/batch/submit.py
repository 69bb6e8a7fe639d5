"""Batch fan-out: pending items go to the provider's batch API at half price, durably.

A ``provider_batches`` row (with the custom ids) is committed before the provider is asked and
updated with the batch id before any wait, so a resume after a pause, Ctrl-C, kill -9 or a
kernel restart re-adopts the open batch and polls it; an item in a live batch is never
submitted again.  Results are ingested item by item (a committed item is skipped when a batch's
results are read again); errored or expired items go into a new batch or, with
``batch_fallback: live``, back to the live fan-out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sqlalchemy import select

from nyxnb import events as ev
from nyxnb.engine.batch.poll import BatchWait
from nyxnb.engine.calls.chain import attempt_from, parse_entry
from nyxnb.engine.context import RunContext
from nyxnb.engine.durable import records
from nyxnb.engine.durable.records import BATCHES, WORKFLOWS
from nyxnb.engine.durable.rows import ItemRow, StepRow
from nyxnb.engine.outcomes import Attempt, ChainResult
from nyxnb.errors import ProviderUnavailable
from nyxnb.providers.base import STOP_END, CompletionRequest
from nyxnb.providers.batch_base import SUCCEEDED, BatchApi, BatchItemResult
from nyxnb.providers.endpoints import workflow_endpoints
from nyxnb.providers.registry import batch_api, create_provider
from nyxnb.store import Store
from nyxnb.store.models import (
    BATCH_CANCELED,
    BATCH_ENDED,
    BATCH_LIVE_STATES,
    BATCH_OPEN,
    COMPLETED,
    utcnow,
)

#: New batches a step may submit in one run before its leftovers run live.
MAX_ROUNDS = 3
#: Called with each ingested item's row and chain result (the fan-out's progress event).
OnItem = Callable[[ItemRow, ChainResult], None]


def batch_enabled(runner: RunContext, step: StepRow) -> bool:
    """Whether a fan-out step goes through the batch API."""
    flag = step.config.batch
    return runner.spec.defaults.batch if flag is None else flag


def custom_id(step: StepRow, idx: int, input_hash: str | None) -> str:
    """The item's id inside a batch: step, item and input hash (``^[A-Za-z0-9_-]{1,64}$``)."""
    return f"s{step.order}-i{idx}-{(input_hash or '')[:16]}"


class BatchRun:
    """The batch execution of one fan-out step's pending items."""

    def __init__(
        self,
        runner: RunContext,
        step: StepRow,
        rows: list[ItemRow],
        requests: list[CompletionRequest],
        on_item: OnItem,
    ) -> None:
        self.runner, self.step, self.on_item = runner, step, on_item
        self.name, model = parse_entry(step.chain[0])
        self.model = model or step.model
        self.rows = {custom_id(step, r.idx, r.input_hash): r for r in rows}
        self.requests = {
            cid: requests[r.idx].with_model(self.model) for cid, r in self.rows.items()
        }
        self.done = {r.idx for r in rows if r.status == COMPLETED}
        self.failed: set[int] = set()
        self._submitted: set[str] = set()  # batch rows this run submitted (not adopted)

    def api(self) -> BatchApi | None:
        """The provider's batch API (None: it has none, or it is down this run)."""
        if self.name in self.runner.pool.down:
            return None
        return batch_api(self.runner.pool.provider(self.name))

    async def run(self) -> tuple[bool, list[int]]:
        """Drain open batches, submit what is left; (False, []) if paused, else items for live."""
        api = self.api()
        if api is None:
            return True, self._pending()
        for round_ in range(MAX_ROUNDS + 1):
            for row in records.open_batches(self.runner.store, self.step.id):
                adopted = row.id not in self._submitted
                if not await self._drain(api, row, adopted):
                    return False, []
            pending = self._pending()
            live_now = self.failed and self.runner.spec.defaults.batch_fallback == "live"
            if not pending or live_now or round_ == MAX_ROUNDS:
                return True, pending
            await self._submit(api, pending)
        return True, self._pending()

    def _pending(self) -> list[int]:
        return sorted(r.idx for r in self.rows.values() if r.idx not in self.done)

    async def _submit(self, api: BatchApi, pending: list[int]) -> None:
        by_idx = {r.idx: cid for cid, r in self.rows.items()}
        cids = [by_idx[i] for i in pending]
        store = self.runner.store
        row_id = records.insert_batch(store, self.step, self.name, self.model or "", cids)
        try:
            batch_id = await api.submit([(cid, self.requests[cid]) for cid in cids], tag=row_id)
        except Exception:
            records.update_batch(store, row_id, state=BATCH_CANCELED, ended_at=utcnow())
            raise
        records.update_batch(
            store, row_id, batch_id=batch_id, state=BATCH_OPEN, submitted_at=utcnow()
        )
        self.failed.clear()
        self._submitted.add(row_id)
        self.runner.step_event(
            ev.BatchSubmitted, self.step, provider=self.name, batch_id=batch_id, items=len(cids)
        )

    async def _drain(self, api: BatchApi, row: records.BatchRow, adopted: bool) -> bool:
        """Poll one batch until it ends and ingest it; False if a pause came first."""
        if row.batch_id is None:
            try:
                row = await self._orphan(api, row)
            except ProviderUnavailable:  # the lookup failed (a 503): pause, a resume looks again
                self.runner.pause_event.set()
                return False
        if row.batch_id is None:
            return True
        if adopted:
            self.runner.step_event(
                ev.BatchSubmitted,
                self.step,
                provider=row.provider,
                batch_id=row.batch_id,
                items=len(row.custom_ids),
                adopted=True,
            )
        if not await BatchWait(self.runner, self.step, api, row).run():
            return False
        ok = failed = 0
        async for result in api.results(row.batch_id, self._requests_of(row)):
            good = self._ingest(result, row.batch_id)
            ok, failed = ok + good, failed + (not good)
        records.update_batch(self.runner.store, row.id, state=BATCH_ENDED, ended_at=utcnow())
        self.runner.step_event(
            ev.BatchEnded,
            self.step,
            provider=row.provider,
            batch_id=row.batch_id,
            succeeded=ok,
            failed=failed,
        )
        return True

    async def _orphan(self, api: BatchApi, row: records.BatchRow) -> records.BatchRow:
        """A row killed between its commit and the batch id's: adopt a batch labelled with it."""
        found = await api.find(row.id)
        if found is None:  # nothing was submitted (or the API cannot label batches)
            records.update_batch(self.runner.store, row.id, state=BATCH_CANCELED)
            return row
        now, store = utcnow(), self.runner.store
        records.update_batch(store, row.id, batch_id=found, state=BATCH_OPEN, submitted_at=now)
        return dataclasses.replace(row, batch_id=found, submitted_at=now)

    def _requests_of(self, row: records.BatchRow) -> dict[str, CompletionRequest]:
        return {cid: self.requests[cid] for cid in row.custom_ids if cid in self.requests}

    def _ingest(self, result: BatchItemResult, batch_id: str) -> bool:
        """Commit one result (skipping stale or already committed items); True if it succeeded."""
        row = self.rows.get(result.custom_id)
        if row is None or row.idx in self.done:
            return result.outcome == SUCCEEDED
        completion = result.completion
        model = self.model or self.runner.pool.provider(self.name).default_model
        if result.outcome == SUCCEEDED and completion is not None:
            prices_as = self.runner.pool.provider(self.name).prices_as
            attempt = attempt_from(
                self.name, model, 1, completion, 0.0, batch_id=batch_id, prices_as=prices_as
            )
            if completion.stop_reason == STOP_END and completion.text.strip():
                chain = ChainResult(completion, [attempt])
                records.complete_item(self.runner.store, self.step, row.idx, completion.text, chain)
                self.runner.count(chain.attempts)
                self.done.add(row.idx)
                self.on_item(row, chain)
                return True
            attempt.outcome, attempt.error_kind = "error", "truncated"
            attempts = [attempt]
        else:
            attempts = [_failed_attempt(self.name, model, result, batch_id)]
        records.record_calls(self.runner.store, self.step, attempts, row.idx)
        self.failed.add(row.idx)
        return False


def _failed_attempt(name: str, model: str, result: BatchItemResult, batch_id: str) -> Attempt:
    return Attempt(
        name,
        model,
        1,
        "error",
        error_kind=result.outcome,
        error=result.error[:500] or f"batch item {result.outcome}",
        batch_id=batch_id,
        service_tier="batch",
    )


async def cancel_batches(store: Store, workflow_id: str) -> list[tuple[str, str]]:
    """Ask the providers to cancel a workflow's live batches; (provider, batch id) of each.

    Each row then says ``canceling`` and stays live: a run polling it (in this process or
    another) sees that within a second and polls at once; otherwise the next resume does. The
    finished items are ingested, the canceled ones follow ``batch_fallback`` (``live``: run
    live now; ``resubmit``: a new batch).
    """
    query = select(BATCHES.c.provider, BATCHES.c.batch_id).where(
        BATCHES.c.workflow_id == workflow_id,
        BATCHES.c.state.in_(BATCH_LIVE_STATES),
        BATCHES.c.batch_id.is_not(None),
    )
    with store.reading() as conn:
        rows = [(str(p), str(b)) for p, b in conn.execute(query)]
        spec = conn.scalar(select(WORKFLOWS.c.spec).where(WORKFLOWS.c.id == workflow_id))
    endpoints = workflow_endpoints(spec) if rows else {}
    done = []
    for provider_name, batch_id in rows:
        provider = create_provider(provider_name, None, endpoints)
        api = batch_api(provider)
        try:
            if api is not None:
                await api.cancel(batch_id)
                records.mark_canceling(store, workflow_id, batch_id)
                done.append((provider_name, batch_id))
        finally:
            await provider.aclose()
    return done
