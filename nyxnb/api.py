"""Run workflows from Python: async and sync iterators (the latter also inside Jupyter), callbacks.

    async for event in nyxnb.arun("brbase-plan.yaml", tenant="nyx", project="BRbase"):
        ...
    result = nyxnb.run(spec, tenant="nyx", project="BRbase", provider="offline", on_event=print)

The sync forms drive the async engine on one background thread that owns its own event loop,
so they work in scripts and inside a notebook cell (whose loop is already running) alike.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import events as ev
from .chain import RetryPolicy
from .engine import Runner
from .models import Workflow
from .spec import WorkflowSpec
from .store import Store, open_store
from .workflows import RunOptions, create_workflow

T = TypeVar("T")
OnEvent = Callable[[ev.Event], None]
StoreArg = Store | str | None
_DONE = object()


@dataclass
class RunResult:
    """The outcome of a run: final status, every event, and the error if it failed."""

    workflow_id: str
    status: str
    events: list[ev.Event] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the workflow completed."""
        return self.status == "completed"


def _store(store: StoreArg) -> Store:
    return store if isinstance(store, Store) else open_store(store)


async def _drive(runner: Runner, queue: asyncio.Queue[Any]) -> None:
    try:
        await runner.execute()
    finally:
        queue.put_nowait(_DONE)


async def _events(
    store: Store,
    workflow_id: str,
    *,
    tenant_id: str | None,
    on_event: OnEvent | None,
    retry: RetryPolicy | None,
    provider_options: dict[str, dict[str, object]] | None,
    runner_ready: Callable[[Runner], None] | None = None,
) -> AsyncIterator[ev.Event]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def emit(event: ev.Event) -> None:
        if on_event is not None:
            on_event(event)
        queue.put_nowait(event)

    runner = Runner(
        store,
        workflow_id,
        emit=emit,
        retry=retry,
        provider_options=provider_options,
        tenant_id=tenant_id,
    )
    if runner_ready is not None:
        runner_ready(runner)
    task = asyncio.create_task(_drive(runner, queue))
    try:
        while (item := await queue.get()) is not _DONE:
            yield item
        await task  # re-raise LeaseHeld / NotFound from the runner
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def arun(
    spec: WorkflowSpec | dict[str, Any] | str | Path,
    *,
    tenant: str,
    project: str,
    store: StoreArg = None,
    provider: str | None = None,
    concurrency: int | None = None,
    cache: bool | None = None,
    max_cost_usd: float | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: dict[str, dict[str, object]] | None = None,
) -> AsyncIterator[ev.Event]:
    """Create a workflow from ``spec`` and run it, yielding events (the first names its id)."""
    st = _store(store)
    options = RunOptions(provider, concurrency, cache, max_cost_usd)
    workflow_id = create_workflow(st, spec, tenant=tenant, project=project, options=options)
    tenant_id = st.find_tenant(tenant).id
    async for event in _events(
        st,
        workflow_id,
        tenant_id=tenant_id,
        on_event=on_event,
        retry=retry,
        provider_options=provider_options,
    ):
        yield event


async def aresume(
    workflow_id: str,
    *,
    store: StoreArg = None,
    tenant: str | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = None,
    provider_options: dict[str, dict[str, object]] | None = None,
) -> AsyncIterator[ev.Event]:
    """Resume a workflow: every step that is not completed runs, in order."""
    st = _store(store)
    tenant_id = st.find_tenant(tenant).id if tenant else None
    async for event in _events(
        st,
        workflow_id,
        tenant_id=tenant_id,
        on_event=on_event,
        retry=retry,
        provider_options=provider_options,
    ):
        yield event


class _LoopThread:
    """One daemon thread owning an event loop, shared by every sync call."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="nyxnb-loop", daemon=True).start()
                cls._loop = loop
            return cls._loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (also inside a running Jupyter loop)."""
    return asyncio.run_coroutine_threadsafe(coro, _LoopThread.loop()).result()


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator from sync code; Ctrl-C stops the run cooperatively."""
    loop = _LoopThread.loop()
    try:
        while True:
            future: Any = asyncio.run_coroutine_threadsafe(agen.__anext__(), loop)  # type: ignore[arg-type]
            try:
                yield future.result()
            except StopAsyncIteration:
                return
    finally:
        closer = getattr(agen, "aclose", None)
        if closer is not None:
            asyncio.run_coroutine_threadsafe(closer(), loop).result()


def run_iter(spec: WorkflowSpec | dict[str, Any] | str | Path, **kw: Any) -> Iterator[ev.Event]:
    """Sync iterator over :func:`arun`'s events."""
    return iterate_sync(arun(spec, **kw))


def resume_iter(workflow_id: str, **kw: Any) -> Iterator[ev.Event]:
    """Sync iterator over :func:`aresume`'s events."""
    return iterate_sync(aresume(workflow_id, **kw))


def _collect(events: Iterator[ev.Event]) -> RunResult:
    seen: list[ev.Event] = []
    workflow_id, status, error = "", "failed", None
    for event in events:
        seen.append(event)
        workflow_id = event.workflow_id
        if isinstance(event, ev.WorkflowCompleted):
            status = "completed"
        elif isinstance(event, ev.WorkflowPaused):
            status = "paused"
        elif isinstance(event, ev.WorkflowFailed):
            status, error = "failed", event.error
    return RunResult(workflow_id, status, seen, error)


def run(spec: WorkflowSpec | dict[str, Any] | str | Path, **kw: Any) -> RunResult:
    """Create and run a workflow to the end (sync; works in notebooks); see :func:`arun`."""
    return _collect(run_iter(spec, **kw))


def resume(workflow_id: str, **kw: Any) -> RunResult:
    """Resume a workflow to the end (sync; works in notebooks); see :func:`aresume`."""
    return _collect(resume_iter(workflow_id, **kw))


def pause(workflow_id: str, *, store: StoreArg = None, tenant: str | None = None) -> None:
    """Ask a running workflow to pause between items and steps (any process may ask)."""
    st = _store(store)
    tenant_id = st.find_tenant(tenant).id if tenant else None
    with st.session(tenant_id) as s:
        s.get_one(Workflow, workflow_id).pause_requested = True
