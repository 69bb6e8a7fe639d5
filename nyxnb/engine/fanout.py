"""Fan-out steps: one call per item, bounded concurrency, each item committed as it completes."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from nyxnb import events as ev
from nyxnb.engine.batch.submit import BatchRun, batch_enabled
from nyxnb.engine.context import RunContext, request_hash
from nyxnb.engine.durable import items as item_store
from nyxnb.engine.durable import records
from nyxnb.engine.durable.rows import ItemRow, ItemRows, StepRow
from nyxnb.engine.generated import parse_items
from nyxnb.engine.outcomes import ChainResult
from nyxnb.engine.requests import fan_out_requests
from nyxnb.errors import BudgetExceeded, ChainExhausted, ClaimLost, StepFailed
from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.endpoints import Table, split_entry
from nyxnb.providers.pricing import price_for
from nyxnb.providers.registry import default_model
from nyxnb.store.models import COMPLETED, FAILED, PENDING, RUNNING, utcnow
from nyxnb.templates import ItemView, StepView, parsed_output

#: Seconds a pause lets calls in flight finish (answers paid for are kept) before cancelling them.
PAUSE_GRACE_S = 2.0
#: Items whose 'sent' rows are reserved in one write, as a multiple of the concurrency.
RESERVE_BLOCK = 4


def _items(runner: RunContext, step: StepRow) -> Iterable[ItemView]:
    """The step's items as the prompt sees them (rows of a dataset or of a structured output).

    A dataset's rows (materialised when the workflow was created) are streamed from the store.
    """
    config = step.config
    if config.dataset is not None:
        return (
            ItemView.row(heading, idx, columns, key)
            for idx, heading, key, columns in item_store.iter_dataset_rows(runner.store, step.id)
        )
    if config.items is not None:
        return [ItemView(it.heading, it.body, i) for i, it in enumerate(config.items)]
    source = runner.ctx[config.items_from or ""].output or ""
    rows = structured_rows(source)
    if rows is not None:
        return [ItemView.row(_row_heading(r, i), i, r) for i, r in enumerate(rows)]
    items = parse_items(source)
    if not items:
        raise runner.fail(
            step,
            StepFailed(
                f"no items found in the output of {config.items_from!r} (expected a JSON list, "
                "markdown headings or a bulleted list)",
                workflow_id=runner.workflow_id,
                step=step.name,
            ),
        )
    return [ItemView(it.heading, it.body, i) for i, it in enumerate(items)]


def structured_rows(output: str) -> list[dict[str, Any]] | None:
    """Rows of a structured output: a list of objects, or an object holding one such list."""
    value = parsed_output(output)
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else None
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    return None


def _row_heading(row: dict[str, Any], idx: int) -> str:
    found = next((row[k] for k in ("heading", "title", "name", "id") if row.get(k)), None)
    return str(found) if found is not None else f"item {idx + 1}"


def _estimate_usd(step: StepRow, requests: list[CompletionRequest], endpoints: Table) -> float:
    name, entry_model = split_entry(step.provider)
    model = step.model or entry_model or default_model(name, endpoints)
    price = price_for(name, model)
    return sum(
        price.cost(len(r.system + r.messages[0].content) // 4, r.max_tokens) for r in requests
    )


def _check_budget(runner: RunContext, step: StepRow, requests: list[CompletionRequest]) -> None:
    limit = runner.spec.max_cost_usd
    if limit is None or not requests:
        return
    spent, estimate = runner.spent_usd(), _estimate_usd(step, requests, runner.pool.endpoints)
    if spent + estimate > limit:
        raise runner.fail(
            step,
            BudgetExceeded(
                f"fan-out {step.name!r}: {len(requests)} items estimated at ${estimate:.4f} "
                f"(max_tokens as the output bound) on top of ${spent:.4f} spent exceeds "
                f"max_cost_usd ${limit:.2f}",
                hint="raise max_cost_usd, lower max_tokens, or pick a cheaper model",
            ),
        )


class _FanOut:
    """One fan-out execution: ``limit`` workers, each with at most one call in flight.

    A worker starts its next call as soon as its provider answers; the item's commit and its
    progress event follow in a separate task, so the database never delays the next call and
    an event is only sent once its item is durable.
    """

    def __init__(
        self,
        runner: RunContext,
        step: StepRow,
        rows: list[ItemRow],
        requests: Sequence[CompletionRequest],
        *,
        lead: bool = True,
    ) -> None:
        self.runner, self.step, self.rows, self.requests = runner, step, rows, requests
        self.total = len(rows)
        self.completed = sum(1 for r in rows if r.status == COMPLETED)
        self.failures: list[tuple[int, ChainExhausted]] = []
        self.limit = (
            runner.config.fan_out_limit
            or step.config.concurrency
            or runner.spec.defaults.concurrency
        )
        self._pending = deque(r for r in rows if r.status != COMPLETED)
        claimer = runner.config.claimer  # a worker: items come from claims shared by workers
        self._source = (
            claimer.source(step.id, list(self._pending), min(self.limit, 8), lead=lead)
            if claimer is not None
            else None
        )
        # Commits in flight only: a finished one leaves (100,000 items never hold 100,000
        # tasks); a commit that failed stays, so its error is raised by run().
        self._commits: set[asyncio.Future[None]] = set()
        self._calling: set[asyncio.Task[Any]] = set()  # workers with a call in flight
        self._cut: set[asyncio.Task[Any]] = set()  # ... that a pause cancelled after its grace
        self._ready: deque[ItemRow] = deque()  # items whose 'sent' rows are committed
        self._block: asyncio.Future[None] | None = None  # the next block being reserved
        self._waiting = False  # a worker waits for that block (nothing else is ready)
        self._stopped = False
        self.answered: dict[tuple[str, str], int] = {}  # (provider, model) -> items answered
        self.cached = 0

    async def run(self) -> bool:
        """Run every pending item; False if a pause stopped it early."""
        workers = [
            asyncio.create_task(self._worker()) for _ in range(min(self.limit, len(self._pending)))
        ]
        watcher = asyncio.create_task(self._watch_pause())
        try:
            await asyncio.gather(*workers)
            self.runner.writer.hurry()  # no call is left to add to the last group commit
            for outcome in await asyncio.gather(*self._commits, return_exceptions=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, ClaimLost):
                    raise outcome
        finally:
            for task in (*workers, *self._commits, watcher):
                task.cancel()
            if self._block is not None:
                await asyncio.gather(self._block, return_exceptions=True)
            self._take_back()
            if self._source is not None:
                self._source.release_unstarted()
        return not self._stopped

    async def _worker(self) -> None:
        if self._source is not None:  # shared claims: take an item only when it starts
            while not self._paused() and (row := await self._source.next()) is not None:
                await self._item(row)
            return
        while not self._paused() and (row := await self._next_reserved()) is not None:
            if self._paused():  # paused while the block was written: never called
                self._ready.appendleft(row)
                return
            await self._item(row)

    async def _next_reserved(self) -> ItemRow | None:
        """The next item whose 'sent' row is committed, reserving the next block ahead.

        Blocks of :data:`RESERVE_BLOCK` x concurrency items are reserved in one write while
        the calls of the last block run, so a call never waits for the database: the block
        joins the next group commit (made while the calls wait on their providers, off their
        path), and is hurried only when a worker finds no item ready.
        """
        while True:
            if len(self._ready) <= self.limit and self._pending and self._block is None:
                self._block = asyncio.ensure_future(self._reserve_block())
                # its failure reaches the workers awaiting it; when they were cancelled first
                # (another worker failed), it must still count as seen, not as a stray traceback
                self._block.add_done_callback(_seen)
            if self._ready:
                return self._ready.popleft()
            if self._block is None:
                return None
            self._waiting = True  # a worker is idle: the block's write must not wait
            self.runner.writer.hurry()
            await asyncio.shield(self._block)

    async def _reserve_block(self) -> None:
        size = min(len(self._pending), self.limit * RESERVE_BLOCK)
        rows = [self._pending.popleft() for _ in range(size)]
        calls = [(r.idx, self.requests[r.idx]) for r in rows]
        try:
            await self.runner.reserve_sent(self.step, calls, urgent=self._waiting)
        except BaseException:
            self._pending.extendleft(reversed(rows))
            raise
        finally:
            self._block, self._waiting = None, False
        self._ready.extend(rows)

    def _paused(self) -> bool:
        if self.runner.pause_event.is_set():
            self._stopped = True
        return self._stopped

    def _take_back(self) -> None:
        """Delete the 'sent' rows reserved for calls that were never made (a pause)."""
        unused = (self.runner.take_sent(self.step, r.idx) for r in self._ready)
        sent = tuple(filter(None, unused))
        self._ready.clear()
        if not sent:
            return
        try:
            with self.runner.store.begin() as conn:
                item_store.write_items(conn, [ItemRows([], None, None, sent)])
        except Exception:  # noqa: BLE001 - cleanup on the way out: the ledger then over-counts
            pass  # by these estimates, never under (the side 'sent' rows are meant to err on)

    async def _item(self, row: ItemRow) -> None:
        idx = row.idx
        me = asyncio.current_task()
        assert me is not None  # a worker is a task
        self._calling.add(me)
        try:
            result = await self.runner.call(self.step, self.requests[idx], idx)
        except asyncio.CancelledError:
            if me not in self._cut:  # not the pause's doing: a real cancellation
                raise
            me.uncancel()
            self._stopped = True  # the item stays pending; resume calls it again
            return
        except ChainExhausted as exc:
            sent = self.runner.take_sent(self.step, idx)
            item_store.fail_item(self.runner.store, self.step, idx, str(exc), exc.attempts, sent)
            self.failures.append((idx, exc))
            return
        finally:
            self._calling.discard(me)
        self._commit(row, result)

    async def _watch_pause(self) -> None:
        """On a pause, give calls in flight :data:`PAUSE_GRACE_S` to land, then cancel them.

        So a pause is seen within seconds even while a provider hangs or rate limits hold the
        item, and answers that arrive within the grace period are still kept.  (One watcher per
        fan-out: a task per call to watch for the pause cost two tasks per item.)
        """
        await self.runner.pause_event.wait()
        self._stopped = True
        if self._calling:
            await asyncio.wait(set(self._calling), timeout=PAUSE_GRACE_S)
        for task in list(self._calling):
            self._cut.add(task)
            task.cancel()

    def _commit(self, row: ItemRow, result: ChainResult) -> None:
        """Hand the item's rows to the group writer; its progress is reported once durable."""
        rows = item_store.item_rows(
            self.step,
            row.idx,
            result.completion.text,
            result,
            self.runner.take_sent(self.step, row.idx),
        )
        done = self.runner.writer.submit(rows)
        self._commits.add(done)
        done.add_done_callback(functools.partial(self._committed, row, result))

    def _committed(self, row: ItemRow, result: ChainResult, done: asyncio.Future[None]) -> None:
        if done.cancelled():
            self._commits.discard(done)
            return
        error = done.exception()
        if error is None:
            self._commits.discard(done)
            self.progress(row, result)
        elif isinstance(error, ClaimLost):  # our claim expired and another worker owns it now
            self._commits.discard(done)
        # any other error stays in _commits: run() raises it

    def progress(self, row: ItemRow, result: ChainResult) -> None:
        """Count a committed item and emit its progress event."""
        idx = row.idx
        self.completed += 1
        who = (result.provider, result.completion.model)
        self.answered[who] = self.answered.get(who, 0) + 1
        self.cached += result.from_cache
        self.runner.emit(
            ev.FanOutProgress(
                *self.runner.at(self.step),
                fan_out_index=idx + 1,
                fan_out_total=self.total,
                fan_out_heading=row.heading,
                completed=self.completed,
                provider=result.provider,
                model=result.completion.model,
                cached=result.from_cache,
                input_tokens=sum(a.input_tokens for a in result.attempts),
                output_tokens=sum(a.output_tokens for a in result.attempts),
                cost_usd=sum(a.cost_usd for a in result.attempts),
                reasoning_tokens=sum(a.reasoning_tokens for a in result.attempts),
            )
        )


def _step_output(items: list[ItemRow]) -> str:
    return "\n\n".join(f"## {i.heading}\n\n{i.output}" for i in items)


async def run_fan_out(runner: RunContext, step: StepRow) -> None:
    """Execute (or resume) a fan-out step."""
    items, prompts = [], []
    for item in _items(runner, step):  # one dataset row's columns at a time
        prompts.append(runner.render(step, item))
        items.append(dataclasses.replace(item, columns={}) if item.columns else item)
    requests = fan_out_requests(runner, step, prompts)
    wanted = [
        (item.heading, request.messages[0].content, request_hash("item", request))
        for item, request in zip(items, requests, strict=True)
    ]
    digest = hashlib.sha256("".join(w[2] for w in wanted).encode()).hexdigest()
    done_view = (
        StepView(
            step.name,
            step.output,
            _views(item_store.load_items(runner.store, step.id), items),
        )
        if step.status == COMPLETED
        else StepView("")
    )
    if runner.skip_if_done(step, digest, done_view):
        return
    rows = item_store.sync_items(runner.store, step, wanted)
    del wanted  # (memory: a 100,000-row dataset keeps one copy of each prompt, the request's)
    _check_budget(runner, step, [requests[r.idx] for r in rows if r.status != COMPLETED])
    records.update_step(runner.store, step.id, status=RUNNING, error=None, started_at=utcnow())
    fan = _FanOut(runner, step, rows, requests)
    runner.emit(
        ev.StepStarted(
            *runner.at(step),
            persona=step.persona,
            provider=step.provider,
            total_items=fan.total,
            done_items=fan.completed,
        )
    )
    finished = await _execute(runner, step, fan)
    fan.rows, fan.requests = [], []  # done with: the final rows are read back below
    del rows, requests
    _raise_failures(runner, step, fan)
    if not finished:
        records.update_step(runner.store, step.id, status=PENDING)
        runner.check_pause()
    final = item_store.load_items(runner.store, step.id)
    output = _step_output(final)
    records.complete_step(runner.store, step, output, digest)
    runner.ctx[step.name] = StepView(step.name, output, _views(final, items))
    del final
    answered = fan.answered or {(step.provider, step.model or ""): 0}
    runner.emit(
        ev.StepCompleted(
            *runner.at(step),
            provider=", ".join(dict.fromkeys(p for p, _ in answered)),
            model=", ".join(dict.fromkeys(m for _, m in answered if m)) or None,
            cached=bool(fan.answered) and fan.cached == sum(fan.answered.values()),
            cached_items=fan.cached,
        )
    )


def _raise_failures(runner: RunContext, step: StepRow, fan: _FanOut) -> None:
    """Fail the step if any item failed (here, or under another worker's claim)."""
    if not fan.failures and runner.config.claimer is not None:  # items other workers failed
        fan.failures = [
            (r.idx, ChainExhausted([("worker", FAILED, r.error or "")]))
            for r in item_store.load_items(runner.store, step.id)
            if r.status == FAILED
        ]
    if fan.failures:
        idx, exc = fan.failures[0]
        raise runner.fail(
            step,
            StepFailed(
                f"{len(fan.failures)} of {fan.total} items failed; first: item {idx + 1}: {exc}",
                workflow_id=runner.workflow_id,
                step=step.name,
                item=idx,
            ),
            item_idx=idx,
        )


async def _execute(runner: RunContext, step: StepRow, fan: _FanOut) -> bool:
    """Run the pending items: through the batch API when the step says so, else live."""
    if batch_enabled(runner, step):
        finished, live = await BatchRun(runner, step, fan.rows, fan.requests, fan.progress).run()
        if not finished:
            return False
        fan._pending = deque(r for r in fan.rows if r.idx in set(live))
    return await fan.run()


def _views(rows: list[ItemRow], items: list[ItemView]) -> list[ItemView]:
    """The items with their outputs, as later steps' templates read them."""
    return [
        dataclasses.replace(items[r.idx], output=r.output)
        if r.idx < len(items)
        else ItemView(r.heading, "", r.idx, r.output)
        for r in rows
    ]


async def help_fan_out(runner: RunContext, step: StepRow) -> int:
    """Run items of a fan-out another worker leads (a worker's spare capacity); returns how many.

    The requests are rebuilt from the stored item inputs; an item whose rebuilt request does not
    hash to its stored input hash is left to the lead.  A batched fan-out is never helped: its
    items belong to its batch (the lead claims them for it, but a helper could look in before
    it does), and calling them live would pay for them twice.
    """
    if batch_enabled(runner, step):
        return 0
    every = item_store.load_items(runner.store, step.id, full=True)  # all: the shared prefix
    built = fan_out_requests(runner, step, [r.input for r in every])
    requests = {
        row.idx: request
        for row, request in zip(every, built, strict=True)
        if row.status != COMPLETED and request_hash("item", request) == row.input_hash
    }
    rows = [r for r in every if r.idx in requests]
    if not rows:
        return 0
    dense = [requests.get(i, requests[rows[0].idx]) for i in range(max(requests) + 1)]
    fan = _FanOut(runner, step, rows, dense, lead=False)
    before = fan.completed
    await fan.run()
    return fan.completed - before


def _seen(task: asyncio.Future[None]) -> None:
    """Mark a finished task's exception as retrieved (it is raised where it is awaited)."""
    if not task.cancelled():
        task.exception()
