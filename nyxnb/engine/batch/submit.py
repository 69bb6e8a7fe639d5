"""Batch fan-out: pending items go to the provider's batch API at half price, durably.

A ``provider_batches`` row (with the custom ids) is committed before the provider is asked,
together with a ``sent`` ledger row per request at the batch price, and updated with the batch
id before any wait, so a resume after a pause, Ctrl-C, kill -9 or a kernel restart re-adopts the
open batch and polls it; an item in a live batch is never submitted again, and the ledger never
counts less than the open batch will bill.  Creating the batch follows the classified policy of
live calls (:mod:`nyxnb.engine.batch.create`); a provider whose batch cannot be created gives
way to the next provider of the chain with a batch API, else the items run live.  Results are
ingested item by item (a committed item is skipped when a batch's results are read again), each
settling its ``sent`` row; errored or expired items go into a new batch or, with
``batch_fallback: live``, back to the live fan-out.

Under a worker the step's items are claimed for the whole batch (renewed by the worker's
heartbeat), so no helping worker calls them live; items handed back to the live fan-out are
released first, to be claimed and shared like any live item.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

from sqlalchemy import select

from nyxnb import events as ev
from nyxnb.engine.batch.create import BatchCreate, Created, GaveUp
from nyxnb.engine.batch.gate import results_through, through
from nyxnb.engine.batch.poll import BatchWait
from nyxnb.engine.calls.chain import attempt_from, parse_entry
from nyxnb.engine.calls.governor import WaitTooLong
from nyxnb.engine.context import Paused, RunContext
from nyxnb.engine.durable import items as item_store
from nyxnb.engine.durable import records
from nyxnb.engine.durable.records import BATCHES, WORKFLOWS
from nyxnb.engine.durable.rows import ItemRow, ItemRows, StepRow
from nyxnb.engine.outcomes import Attempt, ChainResult
from nyxnb.errors import ClaimLost, ErrorKind, MissingKey, ProviderUnavailable
from nyxnb.providers import structured
from nyxnb.providers.base import STOP_END, CompletionRequest
from nyxnb.providers.batch_base import SUCCEEDED, BatchApi, BatchItemResult
from nyxnb.providers.endpoints import workflow_endpoints
from nyxnb.providers.registry import batch_api, create_provider
from nyxnb.store import Database
from nyxnb.store.models import BATCH_ENDED, BATCH_LIVE_STATES, BATCH_OPEN, COMPLETED, utcnow

#: New batches a step may submit in one run before its leftovers run live.
MAX_ROUNDS = 3
#: Results committed together (one group commit) while a batch's results are read.
INGEST_CHUNK = 256
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
        requests: Sequence[CompletionRequest],
        on_item: OnItem,
    ) -> None:
        self.runner, self.step, self.on_item = runner, step, on_item
        self.entries = [parse_entry(e) for e in step.chain]
        self.rows = {custom_id(step, r.idx, r.input_hash): r for r in rows}
        # a batch is its own tier: a step's flex or priority tier is for its live calls
        self.requests = {
            cid: dataclasses.replace(requests[r.idx], service_tier=None)
            for cid, r in self.rows.items()
        }
        self.done = {r.idx for r in rows if r.status == COMPLETED}
        #: the step's output_schema: every batch answer is validated like a live one
        self.step_schema = next((r.output_schema for r in requests), None)
        self.failed: set[int] = set()
        self.skip: set[str] = set()  # providers whose batch could not be created this run
        self.sent = records.batch_sent_ids(runner.store, step.id)  # idx -> 'sent' row id
        self._submitted: set[str] = set()  # batch rows this run submitted (not adopted)
        self._lost: set[str] = set()  # batch rows with a result whose commit a claim refused

    def _target(self) -> tuple[str, BatchApi] | None:
        """The chain's first provider that is up and has a batch API (None: run live)."""
        pool = self.runner.pool
        for name, _ in self.entries:
            if name in pool.down or name in self.skip:
                continue
            try:
                api = batch_api(pool.provider(name))
            except MissingKey as exc:
                pool.mark_down(name, ErrorKind.AUTH, str(exc))
                continue
            if api is not None:
                return name, api
        return None

    def _model(self, name: str) -> str | None:
        """The model the chain's entry for ``name`` names (None: the request's own)."""
        return next((m for n, m in self.entries if n == name and m), None)

    async def run(self) -> tuple[bool, list[int]]:
        """Drain open batches, submit what is left; (False, []) if paused, else items for live.

        Under a worker, whatever way this ends (a pause, a lost lease, an error), the claims
        it holds are handed back, so nothing stays claimed by a run that is gone.
        """
        outcome: tuple[bool, list[int]] = (False, [])
        try:
            outcome = await self._rounds()
        finally:
            claimer = self.runner.config.claimer
            if claimer is not None:
                finished, live = outcome
                claimer.release(self.step.id, live if finished else self._pending())
        return outcome

    async def _rounds(self) -> tuple[bool, list[int]]:
        for round_ in range(MAX_ROUNDS + 1):
            self._claim()
            for row in records.open_batches(self.runner.store, self.step.id):
                adopted = row.id not in self._submitted
                if not await self._drain(row, adopted):
                    return False, []
            pending = self._pending()
            live_now = self.failed and self.runner.spec.defaults.batch_fallback == "live"
            mine = self._held(pending)
            if not mine or live_now or round_ == MAX_ROUNDS:
                return True, pending
            submitted = await self._submit(mine)
            if submitted is None:
                return False, []
            if not submitted:  # no provider of the chain could take the batch: live
                return True, pending
        return True, self._pending()

    def _pending(self) -> list[int]:
        return sorted(r.idx for r in self.rows.values() if r.idx not in self.done)

    def _claim(self) -> None:
        """Under a worker: claim the step's open items for the batch (no helper calls them)."""
        claimer = self.runner.config.claimer
        if claimer is not None:
            claimer.claim(self.step.id, len(self.rows))

    def _held(self, pending: list[int]) -> list[int]:
        """The items a batch may take: all, or under a worker those it holds claims for."""
        claimer = self.runner.config.claimer
        if claimer is None:
            return pending
        return [i for i in pending if (self.step.id, i) in claimer.held]

    async def _submit(self, pending: list[int]) -> bool | None:
        """Create a batch of ``pending`` down the chain; False: none could, None: paused."""
        by_idx = {r.idx: cid for cid, r in self.rows.items()}
        while (target := self._target()) is not None:
            name, api = target
            model = self._model(name)
            batch = [(by_idx[i], i, self.requests[by_idx[i]].with_model(model)) for i in pending]
            priced = api.provider.model_for(batch[0][2])
            outcome = await BatchCreate(self.runner, self.step, api, priced, batch).run()
            if isinstance(outcome, Created):
                self._created(name, outcome, len(batch))
                return True
            if not isinstance(outcome, GaveUp):
                self.runner.pause_event.set()
                return None
            self.skip.add(name)
            nxt = self._target()
            live = "" if nxt else " (the items run live)"
            self.runner.emit(
                ev.ProviderFallback(
                    *self.runner.at(self.step),
                    from_provider=name,
                    to_provider=nxt[0] if nxt else None,
                    reason=outcome.kind,
                    message=f"batch create: {outcome.message}"[:300] + live,
                )
            )
        return False

    def _created(self, name: str, created: Created, items: int) -> None:
        self.sent.update(created.sent)
        self.failed.clear()
        self._submitted.add(created.row_id)
        self.runner.emit(
            ev.BatchSubmitted(
                *self.runner.at(self.step),
                provider=name,
                batch_id=created.batch_id,
                items=items,
                adopted=created.found,
            )
        )

    async def _drain(self, row: records.BatchRow, adopted: bool) -> bool:
        """Poll one batch until it ends and ingest it; False if a pause came first."""
        api = batch_api(self.runner.pool.provider(row.provider))
        assert api is not None  # it had one when the batch was created
        if row.batch_id is None:
            try:
                row = await self._orphan(api, row)
            except (ProviderUnavailable, WaitTooLong, Paused):  # the lookup failed: a resume
                self.runner.pause_event.set()  # looks again
                return False
        if row.batch_id is None:
            return True
        if adopted:
            self.runner.emit(
                ev.BatchSubmitted(
                    *self.runner.at(self.step),
                    provider=row.provider,
                    batch_id=row.batch_id,
                    items=len(row.custom_ids),
                    adopted=True,
                )
            )
        if not await BatchWait(self.runner, self.step, api, row).run():
            return False
        self._claim()  # a run that lost this workflow may have just handed its items back
        self._lost.discard(row.id)
        try:
            ok, failed = await self._ingest_all(api, row)
        except (WaitTooLong, Paused):  # the results could not be read yet: a resume reads them
            self.runner.pause_event.set()
            return False
        if row.id in self._lost:  # a result another worker's claim refused: read it again
            return True
        records.update_batch(self.runner.store, row.id, state=BATCH_ENDED, ended_at=utcnow())
        self.runner.emit(
            ev.BatchEnded(
                *self.runner.at(self.step),
                provider=row.provider,
                batch_id=row.batch_id,
                succeeded=ok,
                failed=failed,
                then=self.runner.spec.defaults.batch_fallback if failed else "",
            )
        )
        return True

    async def _orphan(self, api: BatchApi, row: records.BatchRow) -> records.BatchRow:
        """A row killed between its commit and the batch id's: adopt a batch labelled with it."""
        pause, max_wait = self.runner.pause_event, self.runner.pool.retry.max_wait_s
        found = await through(api.provider, lambda: api.find(row.id), pause, max_wait)
        if found is None:  # nothing was submitted (or the API cannot label batches)
            idxs = {self.rows[c].idx for c in row.custom_ids if c in self.rows}
            sent = [self.sent.pop(i) for i in idxs if i in self.sent]
            records.cancel_batch(self.runner.store, row.id, sent)
            return row
        now, store = utcnow(), self.runner.store
        records.update_batch(store, row.id, batch_id=found, state=BATCH_OPEN, submitted_at=now)
        return dataclasses.replace(row, batch_id=found, submitted_at=now)

    def _requests_of(self, row: records.BatchRow) -> dict[str, CompletionRequest]:
        model = row.model or None
        return {
            cid: self.requests[cid].with_model(model)
            for cid in row.custom_ids
            if cid in self.requests
        }

    async def _ingest_all(self, api: BatchApi, row: records.BatchRow) -> tuple[int, int]:
        """Commit every result of an ended batch (group commits); (succeeded, failed)."""
        assert row.batch_id is not None
        ok = failed = 0
        commits: list[asyncio.Future[None]] = []
        results = api.results(row.batch_id, self._requests_of(row))
        pause, max_wait = self.runner.pause_event, self.runner.pool.retry.max_wait_s
        async for result in results_through(api.provider, results, pause, max_wait):
            good = self._ingest(result, row, commits)
            ok, failed = ok + good, failed + (not good)
            if len(commits) >= INGEST_CHUNK:
                await asyncio.gather(*commits)
                commits.clear()
        await asyncio.gather(*commits)
        return ok, failed

    def _ingest(
        self, result: BatchItemResult, row: records.BatchRow, commits: list[asyncio.Future[None]]
    ) -> bool:
        """Queue one result's commit (skipping stale or committed items); True if it succeeded."""
        item = self.rows.get(result.custom_id)
        if item is None or item.idx in self.done or item.idx in self.failed:
            return result.outcome == SUCCEEDED
        name, batch_id = row.provider, str(row.batch_id)
        model = row.model or self.runner.pool.provider(name).default_model
        completion = result.completion
        if result.outcome == SUCCEEDED and completion is not None:
            prices_as = self.runner.pool.provider(name).prices_as
            attempt = attempt_from(
                name, model, 1, completion, 0.0, batch_id=batch_id, prices_as=prices_as
            )
            schema = self.step_schema  # a batch answer is validated like a live one
            invalid = structured.invalid_reason(completion.text, schema) if schema else None
            if completion.stop_reason == STOP_END and completion.text.strip() and not invalid:
                if schema:
                    completion = dataclasses.replace(
                        completion, text=structured.normalised(completion.text)
                    )
                self.done.add(item.idx)
                chain = ChainResult(completion, [attempt])
                commits.append(asyncio.ensure_future(self._commit(item, chain, row.id)))
                return True
            attempt.outcome = "error"
            attempt.error_kind = ErrorKind.INVALID_OUTPUT if invalid else ErrorKind.TRUNCATED
            attempt.error = invalid
        else:
            attempt = _failed_attempt(name, model, result, batch_id)
        self.failed.add(item.idx)
        rows = records.step_attempt_rows(self.step, [attempt], item.idx)
        settle = self.sent.pop(item.idx, None)
        rows_of = ItemRows(rows, None, None, (settle,) if settle else ())
        commits.append(asyncio.ensure_future(self.runner.writer.write(rows_of)))
        return False

    async def _commit(self, item: ItemRow, chain: ChainResult, row_id: str) -> None:
        """Commit a succeeded item with its ledger row (settling its 'sent' row), then report.

        A commit the item's claim refuses (another run of this workflow held it) leaves the
        batch's row open: its results are read again once the claim is this run's.
        """
        text = chain.completion.text
        sent = self.sent.pop(item.idx, None)
        try:
            await self.runner.writer.write(
                item_store.item_rows(self.step, item.idx, text, chain, sent)
            )
        except ClaimLost:
            self.done.discard(item.idx)
            self._lost.add(row_id)
            if sent is not None:  # the write was rolled back: its 'sent' row stands
                self.sent[item.idx] = sent
            return
        self.runner.count(chain.attempts)
        self.on_item(item, chain)


def _failed_attempt(name: str, model: str, result: BatchItemResult, batch_id: str) -> Attempt:
    return Attempt(
        name,
        model,
        1,
        "error",
        error_kind=ErrorKind(result.outcome),
        error=result.error[:500] or f"batch item {result.outcome}",
        batch_id=batch_id,
        service_tier="batch",
    )


async def cancel_batches(store: Database, workflow_id: str) -> list[tuple[str, str]]:
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
