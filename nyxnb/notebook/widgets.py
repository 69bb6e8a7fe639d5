"""Live progress of a workflow in a notebook: ipywidgets when a frontend watches, text otherwise.

    progress = WorkflowProgress(store=store)              # displays itself
    nyxnb.run(spec, tenant="nyx", project="BRbase", store=store, on_event=progress)
    progress = await WorkflowProgress.arun(spec, tenant="nyx", project="BRbase", store=store)
    progress = WorkflowProgress.start(spec, tenant="nyx", project="BRbase", store=store)
    WorkflowProgress.attach(store, workflow_id)           # a run elsewhere, or after a restart

A kernel serves one request at a time, so a click on Pause is not delivered while a cell blocks.
``await WorkflowProgress.arun(...)`` (the notebook's foreground form) runs the workflow on the
engine's thread and awaits it, which leaves the kernel's loop free to deliver clicks; ``start``
returns at once. With the plain ``nyxnb.run(..., on_event=progress)`` the click arrives after
the cell ends, when the button is already disabled: nothing runs, nothing to pause.

A fan-out waiting on a provider batch (``batch: true``) shows the status ``batch`` and one line
per batch under the steps (``anthropic batch msgbatch_…: 120/300 done, polling every 30 s``);
*Cancel batch* (or :meth:`WorkflowProgress.cancel_batches`) cancels the workflow's live batches
whether the run is in this kernel, in another process, or paused: a running engine sees it
within a second and ingests what finished, the canceled items follow ``batch_fallback``.

The view is chosen at construction: widgets when the running cell came from a live frontend
(JupyterLab, Notebook and VS Code execute with ``allow_stdin=True``; papermill, nbconvert and
nbval with ``False``), else :class:`~nyxnb.notebook.progress.TextProgress`;
``NYXNB_PROGRESS=widget|text`` forces one. Events only update plain state; widgets are redrawn
at most every ``interval_s`` (0.1 s).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from nyxnb import events as ev
from nyxnb.engine import api
from nyxnb.errors import NyxError, RunError
from nyxnb.notebook import foreground
from nyxnb.notebook.inspect import answered, latest_workflow, reader, step_context
from nyxnb.notebook.kernel import execution_count, live_frontend
from nyxnb.notebook.progress import TextProgress
from nyxnb.notebook.state import ACTIVE, ProgressState, StepRow
from nyxnb.notebook.view import WidgetView, display_bundle, static_html
from nyxnb.reports.summary import INTERRUPTED, workflow_summary
from nyxnb.store.database import Store, open_store
from nyxnb.store.models import PAUSED, PENDING, RUNNING

log = logging.getLogger(__name__)
_FINAL = (ev.WorkflowCompleted, ev.WorkflowPaused, ev.WorkflowFailed)
_SYNCS = ThreadPoolExecutor(1, thread_name_prefix="nyxnb-progress")  # store reads of the views
#: Every view of a workflow in this kernel, so that they all show one truth (see ``_siblings``).
_VIEWS: dict[str, weakref.WeakSet[WorkflowProgress]] = {}
#: How long attach keeps reading the store after it found the run dead, before it stops.
DEAD_FOLLOW_S = 30.0
TICK_S = 1.0  # while it runs, the clocks (elapsed, ETA) move at least this often


class WorkflowProgress:
    """Progress of one workflow: call it with events (``on_event=``), or attach it to the store.

    ``store`` is the run's store (default: as ``nyxnb.run``), read for what events do not say;
    ``widget`` forces widgets or text; ``stream`` is where text goes (stdout).
    """

    interval_s = 0.1  # the shortest time between two redraws of the widgets

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        tenant: str | None = None,
        display: bool = True,
        widget: bool | None = None,
        stream: Any = None,
    ) -> None:
        self.store = store if isinstance(store, Store) or store is None else open_store(store)
        self.tenant, self.state = tenant, ProgressState()
        self.widget = live_frontend() if widget is None else widget
        self._lock = threading.RLock()
        self._dirty, self._last_flush = set[int](), 0.0
        self._timer: threading.Timer | None = None
        self._ticker: threading.Timer | None = None
        self._handle: Any = None
        self._static: Any = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._future: Future[api.RunResult] | None = None
        self._pending: Future[None] | None = None
        self._failed, self._store_ok, self._printed = False, self.widget or bool(store), False
        self._reader: Store | None = None
        self._text = None if self.widget else TextProgress(stream)
        self._view = (
            WidgetView(self._on_pause, self._on_resume, self._on_cancel) if self.widget else None
        )
        self._shown_status = ""
        self._shown_in: int | None = None
        self._run_kw: dict[str, Any] = {}  # what a Resume click passes on (provider options)
        if display and self._view is not None:
            self._show()

    # -- events -----------------------------------------------------------------------------
    def __call__(self, event: ev.Event) -> None:
        """Fold one engine event in (use as ``on_event=``); redraws are throttled."""
        self._guard(self._on_event, event)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except NyxError:  # not the run's store: the events alone will do
            self._store_ok = False
        except Exception:  # a progress view must never break the run it shows
            if not self._failed:
                log.exception("WorkflowProgress: cannot show the run")
            self._failed = True

    def _on_event(self, event: ev.Event) -> None:
        with self._lock:
            new = not isinstance(event, ev.StepEvent) or event.order not in self.state.steps
            row = self.state.apply(event)
            self._dirty.update([row.order] if row else [])
        final = isinstance(event, _FINAL)
        if self._text is not None:
            self._text(event)
        if final or (new and self._view is not None):  # all steps (some appear mid-run), totals
            self._sync_from_store(merge=not final)
        if self._view is not None:
            ongoing = isinstance(event, ev.FanOutProgress) and event.completed < event.fan_out_total
            self._schedule(not ongoing, final)

    def _schedule(self, urgent: bool, final: bool = False) -> None:
        wait = self.interval_s - (time.monotonic() - self._last_flush)
        if urgent or wait <= 0:
            self._flush(final)
        elif self._timer is None:
            self._timer = threading.Timer(wait, self._flush)
            self._timer.daemon = True
            self._timer.start()

    def _flush(self, final: bool = False) -> None:
        self._guard(self._redraw, final)

    def _redraw(self, final: bool) -> None:  # under the lock: events, timers and reads all draw
        with self._lock:
            self._timer, self._last_flush = None, time.monotonic()
            dirty, self._dirty = self._dirty, set()
            if self._view is not None:
                self._view.render(self.state, dirty)
            changed = self.state.status != self._shown_status
            if final or changed:  # the saved form follows
                self._update_display()
            if self._view is not None and self.state.status == RUNNING and not final:
                self._tick()
        if changed:
            self._siblings()

    def _tick(self) -> None:
        """While it runs, redraw every ``TICK_S`` so elapsed and ETA move between events."""
        if self._ticker is None and not self._stop.is_set():
            self._ticker = threading.Timer(TICK_S, self._on_tick)
            self._ticker.daemon = True
            self._ticker.start()

    def _on_tick(self) -> None:
        self._ticker = None
        self._flush()

    def _siblings(self) -> None:
        """One truth per workflow: other views of it in this kernel re-read the store."""
        workflow_id = self.state.workflow_id
        if not workflow_id:
            return
        views = _VIEWS.setdefault(workflow_id, weakref.WeakSet())
        views.add(self)
        for other in list(views):
            if other is not self and other.store is not None and not other._runs_it():
                _SYNCS.submit(other._guard, other.refresh)

    def _runs_it(self) -> bool:
        """This view's own run of the workflow is under way (its events are the news)."""
        return self._future is not None and not self._future.done()

    def _sync_from_store(self, merge: bool) -> None:
        if self._store_ok:  # off the engine's thread: the run never waits for the view's reads
            self._pending = _SYNCS.submit(self._guard, self.refresh, self._view is not None, merge)

    # -- the store --------------------------------------------------------------------------
    @classmethod
    def attach(
        cls,
        store: Store | str | None,
        workflow_id: str | None = None,
        *,
        tenant: str | None = None,
        project: str | None = None,
        poll_s: float = 0.5,
        wait: bool | None = None,
        **kw: Any,
    ) -> WorkflowProgress:
        """Show a workflow from the store, finished or running elsewhere, and follow it.

        ``workflow_id`` None: the latest workflow (of ``tenant`` / ``project`` when given), so
        the attach cell works alone after a kernel restart. ``wait``: block until it stops
        (default: in text mode; widgets poll in the background and keep the kernel free).
        """
        st = store if isinstance(store, Store) else open_store(store)
        workflow_id = workflow_id or latest_workflow(st, tenant=tenant, project=project)
        show = kw.pop("display", True)
        progress = cls(store=st, tenant=tenant, display=False, **kw)
        progress.state.workflow_id = workflow_id
        _VIEWS.setdefault(workflow_id, weakref.WeakSet()).add(progress)
        progress.refresh()
        if show and progress._view is not None:
            # drawn from the store before it is shown: the widget's first state (its comm_open
            # messages) and the saved form are the truth, not a placeholder that later update
            # messages must correct; right after a kernel restart the frontend lost those
            progress._show()
        if progress.state.status in ACTIVE:
            progress._poller = threading.Thread(target=progress._poll, args=(poll_s,), daemon=True)
            progress._poller.start()
        if wait if wait is not None else not progress.widget:
            progress.wait()
        return progress

    def refresh(self, show: bool = True, merge: bool = False) -> None:
        """Reload the workflow's state from the store (see :meth:`ProgressState.load`), show it."""
        if self._reader is None:
            self.store = self.store or open_store()
            self._reader = reader(self.store)
        st, workflow_id = self._reader, self.state.workflow_id
        tenant_id = st.tenant_id(self.tenant)
        summary = workflow_summary(st, workflow_id, tenant_id=tenant_id, with_items=False)
        extras, answers = step_context(st, workflow_id), answered(st, workflow_id)
        with self._lock:
            before = self.state.table(ages=False)  # an age alone is no change worth a line
            self.state.load(summary, extras, merge, answers)
            changed = before != self.state.table(ages=False)
            self._dirty.update(self.state.steps)
        now, full = time.monotonic(), not self._printed or self.state.status not in ACTIVE
        if show and self._text is not None and changed and (full or now - self._last_flush > 2):
            print(self.state.table() if full else self.state.headline(), file=self._text.stream)
            self._printed, self._last_flush = True, now  # the table, then a line every 2 s
        elif show and self._view is not None:
            self._flush(final=self.state.status not in ACTIVE)

    def _poll(self, every_s: float) -> None:
        started, dead = time.monotonic(), 0.0
        while not self._stop.wait(every_s):
            try:
                self.refresh()
            except NyxError:
                return
            now, status = time.monotonic(), self.state.status
            abandoned = status == PENDING and now - started > 30
            # a dead run is shown at once, but followed a little longer: on a loaded machine
            # a live runner's lease renewal can come late, and the view then corrects itself
            dead = (dead or now) if status == INTERRUPTED else 0.0
            if status == INTERRUPTED and now - dead < DEAD_FOLLOW_S:
                continue
            if status not in ACTIVE or abandoned:  # abandoned: nobody runs it
                return

    def wait(self, timeout: float | None = None) -> ProgressState:
        """Block until the followed run stops (attach) or the background run ends (start)."""
        for future in (self._future, self._pending):
            if future is not None:
                future.exception(timeout)
        if self._poller is not None:
            self._poller.join(timeout)
        return self.state

    def stop(self) -> None:
        """Stop following the store (the run itself continues)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()

    # -- background and foreground runs -----------------------------------------------------
    @classmethod
    def start(cls, spec: Any = None, *, resume: str | None = None, **kw: Any) -> WorkflowProgress:
        """Run ``spec`` (or ``resume`` a workflow) in the background; ``result()`` waits for it.

        ``widget``, ``display`` and ``stream`` choose the view (see the class); the rest goes to
        :func:`nyxnb.run` (or :func:`nyxnb.resume`).
        """
        store = kw.pop("store", None)
        kw["store"] = store if isinstance(store, Store) else open_store(store)
        view = {k: kw.pop(k) for k in ("widget", "display", "stream") if k in kw}
        progress = kw["on_event"] = cls(store=kw["store"], tenant=kw.get("tenant"), **view)
        progress._run_kw = {k: kw[k] for k in ("provider_options", "retry") if k in kw}
        if resume is not None:
            return progress._background(lambda: api.resume(resume, **kw))
        return progress._background(lambda: api.run(spec, **kw))

    @classmethod
    async def arun(
        cls, spec: Any = None, *, resume: str | None = None, **kw: Any
    ) -> WorkflowProgress:
        """Run in the foreground of a notebook (``await``): the cell waits, and Pause works.

        Why this form: a notebook's next cells read the finished run (``result()``, the step
        table), and papermill / nbval must see the cell end with the run, so the cell has to
        wait; but ipykernel handles one shell message at a time, so a cell that blocks keeps
        every click queued until it ends. So the run goes to the engine's thread (as with
        ``start``) and the cell *awaits* it: the kernel's event loop stays free, and ipykernel
        (7.x) dispatches widget messages while an async cell awaits. (``jupyter-ui-poll`` was
        the other way: it pumps the kernel from a blocking cell, but relies on
        ``Kernel.do_one_iteration``, which ipykernel 7 no longer has.) Interrupting the kernel
        asks the workflow to pause and waits for it to stop.
        """
        progress = cls.start(spec, resume=resume, **kw)
        future = progress._future
        assert future is not None
        interrupted = False
        try:  # shielded: cancelling the cell must not cancel the run's future
            await foreground.wait_awake(asyncio.shield(asyncio.wrap_future(future)))
        except (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = True  # the toolbar's stop button: pause, keep the answers in flight
            await foreground.pause_on_interrupt(future, progress.pause)
        except Exception:  # noqa: BLE001 - result() raises it where the caller asks
            pass
        progress._outcome(interrupted)
        return progress

    def _outcome(self, interrupted: bool) -> None:
        """A paused or failed run ends the cell with one line (Run All stops); else nothing."""
        if self._pending is not None:
            self._pending.exception(timeout=30)  # the last read of the store
        with self._lock:
            why = self.state.headline(timing=False).partition("\n")[2]
        assert self._future is not None
        foreground.outcome(self._future, interrupted, why)

    @classmethod
    def run(cls, spec: Any = None, *, resume: str | None = None, **kw: Any) -> WorkflowProgress:
        """Run and wait (scripts, terminals); in a notebook prefer ``await arun(...)``.

        A blocking cell cannot receive a click: the Pause button stays disabled here once the
        click arrives after the run; ``arun`` or ``start`` keep it live.
        """
        progress = cls.start(spec, resume=resume, **kw)
        assert progress._future is not None
        wait_futures([progress._future])
        return progress

    def _background(self, work: Callable[[], api.RunResult]) -> WorkflowProgress:
        future: Future[api.RunResult] = Future()

        def target() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to result()
                future.set_exception(exc)
                self._guard(self._run_crashed, exc)

        self._future = future
        threading.Thread(target=target, name="nyxnb-progress-run", daemon=True).start()
        return self

    def _run_crashed(self, exc: BaseException) -> None:
        if self._view is not None:  # e.g. a lease held elsewhere: say so next to the buttons
            self._view.say(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._view.resuming = False
            self._view.controls(self.state.status)

    def result(self, timeout: float | None = None) -> api.RunResult:
        """The latest background run's result (waits for it); raises what the run raised."""
        if self._future is None:
            raise RuntimeError("no background run: use WorkflowProgress.start() or .run()")
        return self._future.result(timeout)

    # -- pause, resume and display ----------------------------------------------------------
    def pause(self) -> None:
        """Ask the workflow to pause between items (what the Pause button does)."""
        if not self.state.workflow_id:
            raise RuntimeError("no workflow yet: the run has not started")
        api.pause(self.state.workflow_id, store=self.store, tenant=self.tenant)

    def _ask_pause(self) -> bool:
        """Pause if it still runs; False (and no error) when it already stopped."""
        if self.state.status != RUNNING or not self.state.workflow_id:
            return False
        try:
            self.pause()
        except RunError:  # it finished between the click and now
            return False
        return True

    def _on_pause(self, button: Any) -> None:
        view = self._view
        if view is None:
            return
        with self._lock:
            asked = self._ask_pause()
            view.pausing = asked
            view.say("" if asked else f"nothing to pause: the workflow is {self.state.status}")
            view.controls(self.state.status)

    def cancel_batches(self) -> list[tuple[str, str]]:
        """Cancel the workflow's live provider batches (what *Cancel batch* does).

        Works whether the run is in this kernel (its engine sees the cancel within a second),
        in another process, or not running (the next resume ingests). Finished items are kept;
        the canceled ones follow ``batch_fallback``. Returns (provider, batch id) of each.
        """
        if not self.state.workflow_id:
            raise RuntimeError("no workflow yet: the run has not started")
        canceled = api.cancel_batches(self.state.workflow_id, store=self.store, tenant=self.tenant)
        with self._lock:
            self.state.mark_canceling([batch_id for _, batch_id in canceled])
        return canceled

    def _on_cancel(self, button: Any) -> None:
        """Cancel off the kernel's thread (provider calls), then say what was asked."""
        view = self._view
        if view is None:
            return
        with self._lock:
            if not self.state.live_batches():
                view.say("no live batch to cancel")
                view.batch_controls(self.state)
                return
            view.canceling = True
            view.say("")
            view.batch_controls(self.state)
        threading.Thread(target=self._cancel_now, name="nyxnb-cancel-batch", daemon=True).start()

    def _cancel_now(self) -> None:
        view = self._view
        assert view is not None
        try:
            canceled = self.cancel_batches()
            note = "; ".join(f"cancel requested: {p} batch {b}" for p, b in canceled)
        except Exception as exc:  # noqa: BLE001 - a click reports, it never raises
            canceled, note = [], f"cancel failed: {str(exc).splitlines()[0]}"
        with self._lock:
            view.canceling = False
            view.say(note or "no live batch to cancel")
        self._flush()

    def _on_resume(self, button: Any) -> None:
        """Resume the paused workflow in the background (the kernel stays free)."""
        view, workflow_id = self._view, self.state.workflow_id
        if view is None or not workflow_id or self.state.status not in (PAUSED, INTERRUPTED):
            return
        if self._future is not None and not self._future.done():
            return  # the paused run has not returned yet
        view.resuming = True
        view.say("")
        view.controls(self.state.status)
        kw = dict(self._run_kw, store=self.store, tenant=self.tenant, on_event=self)
        self._background(lambda: api.resume(workflow_id, **kw))

    def _bundle(self) -> dict[str, Any]:
        """The widget's output: the view, and the table as text where widgets do not render."""
        return display_bundle(self.state, self._view)

    def _static_bundle(self) -> dict[str, Any]:
        """A second output, the static copy: hidden while the widget renders (live, or dead
        after a restart), shown where it cannot (a reload after the kernel went away)."""
        return {"text/html": static_html(self.state)}

    def _show(self) -> None:
        from IPython.display import display

        if self._view is not None:
            self._view.render(self.state, None)
        self._handle = display(self._bundle(), raw=True, display_id=True)
        self._static = display(self._static_bundle(), raw=True, display_id=True)
        self._shown_in = execution_count()

    def _update_display(self) -> None:
        # the saved notebook keeps the last state, shown where the widget cannot render
        self._shown_status = self.state.status
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)
        if self._static is not None:
            self._static.update(self._static_bundle(), raw=True)

    def summary(self) -> str:
        """The step table as text: status, items, provider, tokens and cost."""
        if self._pending is not None:
            self._pending.exception(timeout=30)  # the last read of the store
        with self._lock:
            return self.state.table()

    def _ipython_display_(self) -> None:
        if self._view is not None:
            if self._handle is not None and self._shown_in == execution_count():
                return  # shown by this very cell (``attach(...)`` as its last line): once
            self._show()
        else:
            print(self.summary())


__all__ = ["ProgressState", "StepRow", "WorkflowProgress", "latest_workflow", "live_frontend"]
