"""Run workflows from Python: async and sync iterators (the latter also inside Jupyter), callbacks.

    async for event in nyxnb.arun("brbase-plan.yaml", tenant="nyx", project="BRbase"):
        ...
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", provider="offline", on_event=print)

The sync forms drive the async engine on one background thread that owns its own event loop,
so they work in scripts and inside a notebook cell (whose loop is already running) alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nyxnb import events as ev
from nyxnb.engine import loops
from nyxnb.engine.calls.chain import RetryPolicy
from nyxnb.engine.runner import RunConfig, Runner
from nyxnb.engine.workflows import RunOptions, create_workflow
from nyxnb.errors import RunError
from nyxnb.spec import WorkflowSpec
from nyxnb.store.database import Database, Store, open_store
from nyxnb.store.models import COMPLETED, FAILED, PAUSED, RUNNING, Status, Workflow

OnEvent = Callable[[ev.Event], None]
StoreArg = Store | str | None
SpecArg = WorkflowSpec | dict[str, Any] | str | Path
#: Options per provider name, e.g. ``{"offline": {"latency_ms": 20}}``.
ProviderOptions = Mapping[str, Mapping[str, object]]
_DONE = object()
#: On Ctrl-C (or a consumer that stops early) answers already in flight are paid for: wait up
#: to this long for them to be committed before cancelling what is left.
STOP_GRACE_S = 5.0
#: Events reach a sync iterator at most this late (batched: see :class:`_Crossing`).
CROSSING_S = 0.02


@dataclass
class RunResult:
    """The outcome of a run: final status, every event, and the error if it failed."""

    workflow_id: str
    status: Status
    events: list[ev.Event] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the workflow completed."""
        return self.status == COMPLETED


def _store(store: StoreArg) -> Store:
    return store if isinstance(store, Store) else open_store(store)


@dataclass
class Job:
    """A workflow to execute and how: the common input of the async and sync drivers."""

    store: Database
    workflow_id: str
    tenant_id: str | None = None
    on_event: OnEvent | None = None
    retry: RetryPolicy | None = None
    provider_options: ProviderOptions | None = None
    runner_ready: Callable[[Runner], None] | None = None

    def runner(self, sink: Callable[[Any], None]) -> Runner:
        """A runner whose events go to ``on_event`` and then ``sink``."""
        on_event = self.on_event

        def emit(event: ev.Event) -> None:
            if on_event is not None:
                on_event(event)
            sink(event)

        config = RunConfig(
            retry=self.retry, provider_options=self.provider_options, tenant_id=self.tenant_id
        )
        runner = Runner(self.store, self.workflow_id, config, emit=emit)
        if self.runner_ready is not None:
            self.runner_ready(runner)
        return runner


@dataclass(frozen=True)
class Drive:
    """How a job is driven: where its events go, the retry policy, options per provider."""

    on_event: OnEvent | None = None
    retry: RetryPolicy | None = None
    provider_options: ProviderOptions | None = None

    def job(self, store: Database, workflow_id: str, tenant_id: str | None) -> Job:
        """The job that runs ``workflow_id`` this way."""
        return Job(store, workflow_id, tenant_id, self.on_event, self.retry, self.provider_options)


async def _drive(runner: Runner, sink: Callable[[Any], None]) -> None:
    try:
        await runner.execute()
    finally:
        sink(_DONE)


async def job_events(job: Job) -> AsyncIterator[ev.Event]:
    """Execute a job on the running loop, yielding its events."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    runner = job.runner(queue.put_nowait)
    task = asyncio.create_task(_drive(runner, queue.put_nowait))
    try:
        while (item := await queue.get()) is not _DONE:
            yield item
        await task  # re-raise LeaseHeld / NotFound from the runner
    finally:
        if not task.done():  # stop cooperatively: in-flight answers are committed first
            runner.pause_event.set()
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def job_events_sync(job: Job) -> Iterator[ev.Event]:
    """Execute a job on the background loop; events cross threads in batches (`_Crossing`)."""
    loop = _LoopThread.loop()
    crossing = _Crossing(loop)
    runner = job.runner(crossing.put)
    future = asyncio.run_coroutine_threadsafe(_drive(runner, crossing.put), loop)
    finished = False
    try:
        for item in crossing.received(None):
            if item is _DONE:
                break
            yield item
        finished = True
        future.result()
    finally:
        if not finished:  # consumer stopped early or Ctrl-C: stop the run cooperatively
            loop.call_soon_threadsafe(runner.pause_event.set)
            if not _drain(crossing, time.monotonic() + STOP_GRACE_S):
                future.cancel()  # what is still in flight after the grace period is dropped
                _drain(crossing, None)


class _Crossing:
    """Events from the loop's thread to the caller's, a batch per :data:`CROSSING_S` at most.

    One wake-up of the caller's thread per event made the two threads trade the GIL a thousand
    times in a 1,000-item fan-out (~15% of its time); ``on_event`` callbacks still run on the
    loop's thread as each event is emitted, so only iterating callers see the batching.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._out: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self._batch: list[Any] = []
        self._timer: asyncio.TimerHandle | None = None

    def put(self, item: Any) -> None:
        """Queue an event (on the loop's thread); ``_DONE`` sends everything at once."""
        self._batch.append(item)
        if item is _DONE:
            self._send()
        elif self._timer is None:
            self._timer = self._loop.call_later(CROSSING_S, self._send)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if batch:
            self._out.put(batch)

    def received(self, deadline: float | None) -> Iterator[Any]:
        """Events as they arrive (on the caller's thread), until ``deadline`` passes."""
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                batch = self._out.get(timeout=timeout)
            except queue.Empty:
                return
            yield from batch


def _drain(crossing: _Crossing, deadline: float | None) -> bool:
    """Discard events until the run ends (True) or ``deadline`` passes (False)."""
    return any(item is _DONE for item in crossing.received(deadline))


def new_job(
    spec: SpecArg, tenant: str, project: str, store: StoreArg, options: RunOptions, drive: Drive
) -> Job:
    """Create the workflow for ``spec`` and return the job that runs it."""
    st = _store(store)
    workflow_id = create_workflow(st, spec, tenant=tenant, project=project, options=options)
    return drive.job(st, workflow_id, st.find_tenant(tenant).id)


def resume_job(workflow_id: str, store: StoreArg, tenant: str | None, drive: Drive) -> Job:
    """The job that resumes ``workflow_id`` (scoped to ``tenant`` when given)."""
    st = _store(store)
    return drive.job(st, workflow_id, st.tenant_id(tenant))


async def arun(
    spec: SpecArg,
    *,
    tenant: str,
    project: str,
    store: StoreArg = None,
    provider: str | None = None,
    concurrency: int | None = None,
    cache: bool | None = None,
    max_cost_usd: float | None = None,
    batch: bool | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: ProviderOptions | None = None,
) -> AsyncIterator[ev.Event]:
    """Create a workflow from ``spec`` and run it, yielding events (the first names its id).

    ``provider`` runs every step on that one provider; ``concurrency``, ``cache`` and
    ``max_cost_usd`` override the spec's; ``batch`` sends every fan-out through the provider's
    batch API; ``on_event`` is called with each event (on the loop's thread); ``retry`` is the
    retry policy; ``provider_options`` maps a provider name to its options.
    """
    options = RunOptions(provider, concurrency, cache, max_cost_usd, batch)
    job = new_job(spec, tenant, project, store, options, Drive(on_event, retry, provider_options))
    async for event in job_events(job):
        yield event


async def aresume(
    workflow_id: str,
    *,
    store: StoreArg = None,
    tenant: str | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: ProviderOptions | None = None,
) -> AsyncIterator[ev.Event]:
    """Resume a workflow: every step that is not completed runs, in order."""
    job = resume_job(workflow_id, store, tenant, Drive(on_event, retry, provider_options))
    async for event in job_events(job):
        yield event


class _LoopThread:
    """One daemon thread owning an event loop, shared by every sync call."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = loops.new_event_loop()  # timers on time (see loops.py)
                threading.Thread(target=loop.run_forever, name="nyxnb-loop", daemon=True).start()
                cls._loop = loop
            return cls._loop


def run_iter(
    spec: SpecArg,
    *,
    tenant: str,
    project: str,
    store: StoreArg = None,
    provider: str | None = None,
    concurrency: int | None = None,
    cache: bool | None = None,
    max_cost_usd: float | None = None,
    batch: bool | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: ProviderOptions | None = None,
) -> Iterator[ev.Event]:
    """Sync iterator over a new run's events (the keywords of :func:`arun`)."""
    options = RunOptions(provider, concurrency, cache, max_cost_usd, batch)
    drive = Drive(on_event, retry, provider_options)
    return job_events_sync(new_job(spec, tenant, project, store, options, drive))


def resume_iter(
    workflow_id: str,
    *,
    store: StoreArg = None,
    tenant: str | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: ProviderOptions | None = None,
) -> Iterator[ev.Event]:
    """Sync iterator over a resumed run's events (the keywords of :func:`aresume`)."""
    drive = Drive(on_event, retry, provider_options)
    return job_events_sync(resume_job(workflow_id, store, tenant, drive))


def _collect(events: Iterator[ev.Event]) -> RunResult:
    seen: list[ev.Event] = []
    workflow_id, status, error = "", FAILED, None
    for event in events:
        seen.append(event)
        workflow_id = event.workflow_id
        if isinstance(event, ev.WorkflowCompleted):
            status = COMPLETED
        elif isinstance(event, ev.WorkflowPaused):
            status = PAUSED
        elif isinstance(event, ev.WorkflowFailed):
            status, error = FAILED, event.error
    return RunResult(workflow_id, status, seen, error)


def run(
    spec: SpecArg,
    *,
    tenant: str,
    project: str,
    store: StoreArg = None,
    provider: str | None = None,
    concurrency: int | None = None,
    cache: bool | None = None,
    max_cost_usd: float | None = None,
    batch: bool | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: ProviderOptions | None = None,
) -> RunResult:
    """Create and run a workflow to the end (sync; works in notebooks); see :func:`arun`."""
    options = RunOptions(provider, concurrency, cache, max_cost_usd, batch)
    drive = Drive(on_event, retry, provider_options)
    return _collect(job_events_sync(new_job(spec, tenant, project, store, options, drive)))


def resume(
    workflow_id: str,
    *,
    store: StoreArg = None,
    tenant: str | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: ProviderOptions | None = None,
) -> RunResult:
    """Resume a workflow to the end (sync; works in notebooks); see :func:`aresume`."""
    drive = Drive(on_event, retry, provider_options)
    return _collect(job_events_sync(resume_job(workflow_id, store, tenant, drive)))


def submit(
    spec: SpecArg,
    *,
    tenant: str,
    project: str,
    store: StoreArg = None,
    provider: str | None = None,
    concurrency: int | None = None,
    cache: bool | None = None,
    max_cost_usd: float | None = None,
    batch: bool | None = None,
) -> str:
    """Queue a workflow for ``nyxnb worker`` processes (no provider call); returns its id."""
    from nyxnb.engine.workers.queue import submit as queue_submit

    options = RunOptions(provider, concurrency, cache, max_cost_usd, batch)
    return queue_submit(_store(store), spec, tenant=tenant, project=project, options=options)


def pause(workflow_id: str, *, store: StoreArg = None, tenant: str | None = None) -> None:
    """Ask a running workflow to pause between items and steps (any process may ask)."""
    st = _store(store)
    tenant_id = st.tenant_id(tenant)
    with st.session(tenant_id) as s:
        workflow = s.get_one(Workflow, workflow_id)
        if workflow.status != RUNNING:
            raise RunError(
                f"workflow {workflow_id} is {workflow.status}, not running: nothing to pause",
                hint=_not_running_hint(workflow_id, workflow.status),
            )
        workflow.pause_requested = True


def _not_running_hint(workflow_id: str, status: str) -> str:
    if status == COMPLETED:
        return f"it finished; see its outputs with `nyxnb show {workflow_id}`"
    if status == PAUSED:
        return f"it is already paused; `nyxnb resume {workflow_id}` continues it"
    return f"`nyxnb resume {workflow_id}` runs it (every step not completed)"


def cancel_batches(
    workflow_id: str, *, store: StoreArg = None, tenant: str | None = None
) -> list[tuple[str, str]]:
    """Cancel a workflow's live provider batches (any process may ask); (provider, batch id).

    A run polling them, here or elsewhere, sees the cancel within a second and ingests what
    finished; the canceled items follow ``batch_fallback``. Not running: the next resume does.
    """
    from nyxnb.engine.batch.submit import cancel_batches as acancel

    st = _store(store)
    with st.session(st.tenant_id(tenant), read_only=True) as s:
        s.get_one(Workflow, workflow_id)  # NotFound (or another tenant's): a clear error
    future = asyncio.run_coroutine_threadsafe(acancel(st, workflow_id), _LoopThread.loop())
    return future.result()
