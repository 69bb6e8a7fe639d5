"""The worker loop: lead queued workflows, lend spare capacity to fan-outs others lead.

A worker registers itself in ``workers`` and heartbeats every quarter of its claim TTL (at most
``HEARTBEAT_S``), renewing its item claims on the way.  The TTL (``--claim-ttl``,
``NYXNB_CLAIM_TTL_S``, 6 s by default) bounds how soon other workers take over after a kill -9:
it is both the item claims' TTL and the run lease's of the workflows this worker leads.

Each turn it either claims the next queued or crashed-and-expired workflow
and runs it as the *lead* (its steps run once, here; its fan-outs are shared through item claims),
or helps a fan-out another worker leads, claiming items in small batches while it has nothing of
its own.  :meth:`Worker.drain` (Ctrl-C) stops claiming, lets calls in flight finish and commit,
releases unstarted claims, and puts a workflow it was leading back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Table, delete, func, insert, select, update

from nyxnb import events as ev
from nyxnb.engine.calls.chain import RetryPolicy
from nyxnb.engine.durable import records
from nyxnb.engine.fanout import help_fan_out
from nyxnb.engine.runner import RunConfig, Runner
from nyxnb.engine.workers import queue
from nyxnb.engine.workers.claims import ItemClaimer, claim_ttl_s, heartbeat_s
from nyxnb.errors import NyxError
from nyxnb.store.database import Database
from nyxnb.store.holders import new_owner
from nyxnb.store.models import PAUSED, RUNNING, StepItem, Workflow, aware, utcnow
from nyxnb.store.models import Worker as WorkerRow

HEARTBEAT_S = 1.5
LIVE_S = 10.0  # a worker whose heartbeat is older than this is listed as gone
WORKERS: Table = WorkerRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs: calls in flight, tenant filter, when to stop."""

    concurrency: int = 8
    tenant_id: str | None = None
    exit_when_idle: bool = False
    max_workflows: int | None = None
    poll_s: float = 0.2
    claim_ttl_s: float | None = None  # None: NYXNB_CLAIM_TTL_S, else 6 s
    retry: RetryPolicy | None = None
    provider_options: dict[str, dict[str, object]] | None = None


@dataclass
class WorkerStats:
    """What a worker did: workflows led, items committed for others' fan-outs."""

    led: list[str] = field(default_factory=list)
    helped_items: int = 0
    refused_commits: int = 0


class Worker:
    """One worker process's loop (asyncio); see the module docstring."""

    def __init__(
        self,
        store: Database,
        options: WorkerOptions | None = None,
        *,
        on_event: Callable[[ev.Event], None] | None = None,
    ) -> None:
        self.store, self.options = store, options or WorkerOptions()
        self.owner = new_owner()
        self.ttl_s = claim_ttl_s(self.options.claim_ttl_s)
        self.claimer = ItemClaimer(store, self.owner, ttl_s=self.ttl_s)
        self.stats = WorkerStats()
        self._on_event = on_event or (lambda _e: None)
        self._draining = asyncio.Event()
        self._current: Runner | None = None

    def drain(self) -> None:
        """Stop taking work; calls in flight finish, unstarted claims are released."""
        self._draining.set()
        if self._current is not None:
            self._current.pause_event.set()

    async def run(self) -> WorkerStats:
        """Work until drained, idle (``exit_when_idle``) or ``max_workflows`` were led."""
        self._register()
        beat = asyncio.create_task(self._heartbeat())
        try:
            while not self._draining.is_set() and not self._enough():
                if not await self._turn():
                    if self.options.exit_when_idle and not queue.busy(
                        self.store, tenant_id=self.options.tenant_id
                    ):
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._draining.wait(), self.options.poll_s)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self._unregister()
        self.stats.refused_commits = self.claimer.refused
        return self.stats

    def _enough(self) -> bool:
        limit = self.options.max_workflows
        return limit is not None and len(self.stats.led) >= limit

    async def _turn(self) -> bool:
        """Lead one workflow or help one fan-out; False when there was nothing to do."""
        tenant_id = self.options.tenant_id
        workflow_id = queue.claim_next(
            self.store, self.owner, tenant_id=tenant_id, ttl_s=self.ttl_s
        )
        if workflow_id is not None:
            await self._lead(workflow_id)
            return True
        for shared in queue.shared_fan_outs(self.store, tenant_id=tenant_id):
            done = await self._help(shared)
            if done:
                return True
        return False

    def _runner(self, workflow_id: str, *, lead: bool = True) -> Runner:
        config = RunConfig(
            retry=self.options.retry,
            provider_options=self.options.provider_options,
            owner=self.owner,
            lease_ttl_s=self.ttl_s,
            claimer=self.claimer,
            fan_out_limit=self.options.concurrency,
            fenced=lead,  # a helper holds item claims, not the run's lease
        )
        return Runner(self.store, workflow_id, config, emit=self._on_event)

    async def _lead(self, workflow_id: str) -> None:
        runner = self._runner(workflow_id)
        self._current = runner
        self._set_row(workflow_id=workflow_id)
        try:
            await runner.execute()
        except NyxError:  # lost the race for the lease, or the row went away
            return
        finally:
            self._current = None
            self._set_row(workflow_id=None)
        self.stats.led.append(workflow_id)
        if self._draining.is_set() and _status(self.store, workflow_id) == PAUSED:
            queue.requeue(self.store, workflow_id)

    async def _help(self, shared: queue.SharedFanOut) -> int:
        runner = self._runner(shared.workflow_id, lead=False)
        self._current = runner
        try:
            runner.prepare()
            step = next(
                s
                for s in records.load_steps(self.store, runner.workflow_id)
                if s.id == shared.step_id
            )
            done = await help_fan_out(runner, step)
        except (NyxError, StopIteration):
            return 0
        finally:
            self._current = None
            runner.writer.close()
            await runner.pool.aclose()
        self.stats.helped_items += done
        return done

    # -- registry and heartbeat -------------------------------------------------------------
    def _register(self) -> None:
        host, pid, now = socket.gethostname(), os.getpid(), utcnow()
        with self.store.begin() as conn:
            conn.execute(
                insert(WORKERS).values(
                    id=self.owner.rsplit(":", 1)[-1] + "-" + str(pid),
                    owner=self.owner,
                    host=host,
                    pid=pid,
                    concurrency=self.options.concurrency,
                    tenant_filter=self.options.tenant_id,
                    started_at=now,
                    heartbeat_at=now,
                    claims=0,
                    created_at=now,
                    updated_at=now,
                )
            )

    def _set_row(self, **values: object) -> None:
        with self.store.begin() as conn:
            conn.execute(
                update(WORKERS)
                .where(WORKERS.c.owner == self.owner)
                .values(**values, heartbeat_at=utcnow(), updated_at=utcnow())
            )

    def _unregister(self) -> None:
        with self.store.begin() as conn:
            conn.execute(delete(WORKERS).where(WORKERS.c.owner == self.owner))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(min(HEARTBEAT_S, heartbeat_s(self.ttl_s)))
            try:
                self._set_row(claims=self.claimer.renew())
                self._watch_helped()
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the worker
                continue

    def _watch_helped(self) -> None:
        """Stop helping a workflow that was paused or ended under us."""
        runner = self._current
        if runner is None or runner.workflow_id == _leading(self.store, self.owner):
            return
        if _status(self.store, runner.workflow_id) != RUNNING:
            runner.pause_event.set()


def _status(store: Database, workflow_id: str) -> str | None:
    with store.reading() as conn:
        return conn.scalar(select(Workflow.status).where(Workflow.id == workflow_id))


def _leading(store: Database, owner: str) -> str | None:
    with store.reading() as conn:
        return conn.scalar(select(Workflow.id).where(Workflow.lease_owner == owner).limit(1))


@dataclass(frozen=True)
class LiveWorker:
    """A row of ``nyxnb workers``."""

    owner: str
    host: str
    pid: int
    concurrency: int
    claims: int
    workflow_id: str | None
    started_at: str
    heartbeat_age_s: float


def live_workers(store: Database) -> list[LiveWorker]:
    """Workers whose heartbeat is recent, with the item claims they hold now."""
    now = utcnow()
    held = (
        select(func.count())
        .where(StepItem.claimed_by == WorkerRow.owner, StepItem.status == RUNNING)
        .scalar_subquery()
    )
    query = (
        select(WorkerRow, held)
        .where(WorkerRow.heartbeat_at >= now - timedelta(seconds=LIVE_S))
        .order_by(WorkerRow.started_at)
    )
    with store.session(read_only=True) as s:
        rows = s.execute(query).all()
    out = []
    for w, claims in rows:
        beat = aware(w.heartbeat_at) or now
        out.append(
            LiveWorker(
                w.owner,
                w.host,
                w.pid,
                w.concurrency,
                int(claims or 0),
                w.workflow_id,
                str(w.started_at),
                round((now - beat).total_seconds(), 1),
            )
        )
    return out
