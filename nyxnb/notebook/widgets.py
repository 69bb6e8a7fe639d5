"""Live progress of a workflow in a notebook: ipywidgets when a frontend watches, text otherwise.

    progress = WorkflowProgress(store=store)              # displays itself
    nyxnb.run(spec, tenant="nyx", project="BRbase", store=store, on_event=progress)
    WorkflowProgress.attach(store, workflow_id)           # a run elsewhere, or after a restart
    progress = WorkflowProgress.start(spec, tenant="nyx", project="BRbase", store=store)

A kernel serves one request at a time: Pause works while a cell runs ``start`` or ``attach``.

The view is chosen at construction: widgets when the running cell came from a live frontend
(JupyterLab, Notebook and VS Code execute with ``allow_stdin=True``; papermill, nbconvert and
nbval with ``False``), else :class:`~nyxnb.notebook.progress.TextProgress`;
``NYXNB_PROGRESS=widget|text`` forces one. Events only update plain state; widgets are redrawn
at most every ``interval_s`` (0.1 s).
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

from nyxnb import events as ev
from nyxnb.engine import api
from nyxnb.engine.report import workflow_summary
from nyxnb.errors import NyxError
from nyxnb.notebook.inspect import reader, step_context
from nyxnb.notebook.progress import TextProgress
from nyxnb.store.database import Store, open_store

log = logging.getLogger(__name__)
ENV_MODE = "NYXNB_PROGRESS"
ACTIVE = ("pending", "running")
_FINAL = (ev.WorkflowCompleted, ev.WorkflowPaused, ev.WorkflowFailed)
_COLORS = {"completed": "green", "running": "royalblue", "failed": "crimson", "paused": "orange"}
_HEAD = ("#", "step", "type", "persona", "provider", "status", "items", "current")
_SYNCS = ThreadPoolExecutor(1, thread_name_prefix="nyxnb-progress")  # store reads of the views


def live_frontend() -> bool:
    """True when the running cell came from an interactive frontend that renders widgets."""
    mode = os.environ.get(ENV_MODE, "auto").strip().lower()
    if mode in ("widget", "text"):
        return mode == "widget"
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:  # plain Python or terminal IPython
        return False
    content = (kernel.get_parent("shell") or {}).get("content") or {}  # the running request
    return bool(content.get("allow_stdin", False))


@dataclass
class StepRow:
    """What the view shows about one step."""

    order: int
    name: str
    type: str = "llm"
    persona: str | None = None
    provider: str | None = None
    status: str = "pending"
    items_done: int = 0
    items_total: int = 0  # fan-out items; 0 for single-call steps
    heading: str = ""  # current fan-out item, or the implementation prompt's feature
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    auto_generated: bool = False

    def cells(self) -> tuple[str, ...]:
        """The row as text, in the columns of the table."""
        items = f"{self.items_done}/{self.items_total}" if self.items_total else ""
        who = (self.name, self.type, self.persona or "", self.provider or "")
        return (str(self.order + 1), *who, self.status, items, self.heading[:40])


_ROW_FIELDS = {f.name for f in fields(StepRow)}


@dataclass
class ProgressState:
    """Plain state of one workflow, built from events and/or the store."""

    workflow_id: str = ""
    name: str = ""
    status: str = "pending"
    error: str | None = None
    steps: dict[int, StepRow] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    unattributed: list[float] = field(default_factory=lambda: [0, 0, 0.0])
    run_totals: list[float] = field(default_factory=lambda: [0, 0, 0.0])  # from this run's events

    def totals(self) -> tuple[int, int, float]:
        """Input tokens, output tokens and cost so far."""
        rows, extra = self.steps.values(), self.unattributed
        tokens_in = sum(r.input_tokens for r in rows) + extra[0]
        tokens_out = sum(r.output_tokens for r in rows) + extra[1]
        return int(tokens_in), int(tokens_out), sum(r.cost_usd for r in rows) + extra[2]

    def _add(self, row: StepRow, tokens_in: int, tokens_out: int, cost: float) -> None:
        row.input_tokens += tokens_in
        row.output_tokens += tokens_out
        row.cost_usd += cost
        for i, v in enumerate((tokens_in, tokens_out, cost)):
            self.run_totals[i] += v

    def apply(self, e: ev.Event) -> StepRow | None:
        """Fold one event in; returns the row it touched, if any."""
        self.workflow_id = e.workflow_id
        if isinstance(e, ev.WorkflowStarted):
            self.name, self.status, self.error = e.name, "running", None
            self.run_totals = [0, 0, 0.0]
        elif isinstance(e, ev.WorkflowCompleted):
            self.status = "completed"
            # fan-out events may not carry tokens: book the rest of the run on the workflow
            for i, v in enumerate((e.input_tokens, e.output_tokens, e.cost_usd)):
                self.unattributed[i] += max(0, v - self.run_totals[i])
        elif isinstance(e, ev.WorkflowPaused | ev.WorkflowFailed):
            self.status = "paused" if isinstance(e, ev.WorkflowPaused) else "failed"
            self.error = getattr(e, "error", None)
        elif isinstance(e, ev.StepEvent):
            return self._apply_step(e)
        for row in self.steps.values():  # the run ended
            row.status = "pending" if row.status == "running" else row.status
        return None

    def _apply_step(self, e: ev.StepEvent) -> StepRow:
        row = self.steps.get(e.order)
        if row is None or row.name != e.name:
            row = self.steps[e.order] = StepRow(e.order, e.name, e.step_type)
        if isinstance(e, ev.StepStarted):
            row.status, row.persona, row.auto_generated = "running", e.persona, e.auto_generated
            row.provider = e.provider or row.provider
            row.items_total, row.items_done = e.total_items or 0, e.done_items
            row.heading = getattr(e, "heading", None) or row.heading
        elif isinstance(e, ev.FanOutProgress):
            row.status, row.items_done, row.items_total = "running", e.completed, e.fan_out_total
            row.heading, row.provider = e.fan_out_heading, e.provider or row.provider
            tokens = [getattr(e, k, 0) for k in ("input_tokens", "output_tokens", "cost_usd")]
            self._add(row, *tokens)
        elif isinstance(e, ev.StepCompleted):
            row.status, row.items_done = "completed", row.items_total
            row.provider = e.provider or row.provider
            if row.type == "fan-out":  # its tokens come per item, or with the run's totals
                row.heading = ""
            else:
                self._add(row, e.input_tokens, e.output_tokens, e.cost_usd)
        elif isinstance(e, ev.StepFailed):
            row.status = "failed"
        elif isinstance(e, ev.ProviderFallback):
            item = f" item {e.item_index + 1}" if e.item_index is not None else ""
            to = e.to_provider or "none left"
            self.fallbacks.append(f"{e.name}{item}: {e.from_provider} ({e.reason}) -> {to}")
            row.provider = e.to_provider or row.provider
        elif isinstance(e, ev.RateLimited):
            row.heading = e.summary  # "waiting for openai: 600 rpm" until the next item lands
        return row

    def load(self, summary: dict[str, Any], extras: dict[int, Any], merge: bool = False) -> None:
        """Take a store summary as the state; ``merge`` (mid-run: events are newer) adds steps."""
        self.workflow_id, self.name = summary["id"], summary["name"]
        if not merge:
            self.status, self.error = summary["status"], summary.get("error")
            self.steps, self.unattributed = {}, [0, 0, 0.0]
        for data in summary["steps"]:
            row = StepRow(**{k: v for k, v in data.items() if k in _ROW_FIELDS})
            row.heading, used = extras.get(row.order, ("", None))
            row.provider = None if row.type == "pattern-check" else used or row.provider
            old = self.steps.get(row.order)
            if old is None or old.name != row.name:
                self.steps[row.order] = row
            else:
                old.heading = old.heading or row.heading
        if merge:
            return
        totals = summary.get("totals") or {}
        for i, key in enumerate(("input_tokens", "output_tokens", "cost_usd")):
            self.unattributed[i] = max(0, float(totals.get(key) or 0) - self.totals()[i])

    def headline(self) -> str:
        """One line: name, status, steps done, tokens and cost (and the error, if any)."""
        done = sum(r.status == "completed" for r in self.steps.values())
        tokens_in, tokens_out, cost = self.totals()
        line = f"{self.name or 'workflow'}: {self.status}, {done}/{len(self.steps)} steps, "
        line += f"{tokens_in}+{tokens_out} tokens, ${cost:.4f}"
        return line + (f"\nerror: {self.error}" if self.error else "")

    def table(self) -> str:
        """The headline and the step table as aligned text (the view's text form)."""
        rows = [r.cells() for r in sorted(self.steps.values(), key=lambda r: r.order)]
        widths = [max([len(c), *(len(x[i]) for x in rows)]) for i, c in enumerate(_HEAD)]
        lines = ["  ".join(map(str.ljust, x, widths)).rstrip() for x in [_HEAD, *rows]]
        return "\n".join([self.headline(), *lines, *(f"fallback {f}" for f in self.fallbacks)])


class _WidgetView:
    """ipywidgets: a header with totals and a Pause button, a row per step, fallbacks."""

    WIDTHS = ("2.5em", "11em", "12em", "8em", "7em", "6.5em", "4.5em", "16em")

    def __init__(self, on_pause: Callable[[Any], None]) -> None:
        import ipywidgets as w

        self.w = w
        self.header, self.fallbacks = w.HTML(), w.HTML()
        self.pause = w.Button(description="Pause", icon="pause", tooltip="pause between items")
        self.pause.on_click(on_pause)
        self.grid = w.VBox([self._line([f"<b>{h}</b>" for h in _HEAD], bar=None)])
        self.box = w.VBox([w.HBox([self.header, self.pause]), self.grid, self.fallbacks])
        self.rows: dict[int, tuple[list[Any], Any]] = {}

    def _line(self, values: list[str], bar: Any) -> Any:
        w, widths = self.w, self.WIDTHS
        cells = [w.HTML(v, layout=w.Layout(width=wd)) for v, wd in zip(values, widths, strict=True)]
        bar = bar or w.HTML(layout=w.Layout(width="9em"))
        return w.HBox([*cells[:6], bar, *cells[6:]])

    def render(self, state: ProgressState, orders: set[int] | None) -> None:
        """Redraw the header and the rows in ``orders`` (all when None)."""
        for row in sorted(state.steps.values(), key=lambda r: r.order):
            if row.order not in self.rows:
                bar = self.w.FloatProgress(0.0, min=0.0, max=1.0, layout={"width": "9em"})
                line = self._line([""] * len(_HEAD), bar)
                self.rows[row.order] = ([c for c in line.children if c is not bar], bar)
                self.grid.children = [*self.grid.children, line]
            elif orders is not None and row.order not in orders:
                continue
            cells, bar = self.rows[row.order]
            for cell, value in zip(cells, row.cells(), strict=True):
                cell.value = html.escape(value)
            color = _COLORS.get(row.status, "gray")
            cells[5].value = f'<span style="color:{color}">{row.status}</span>'
            total = row.items_total or 1
            bar.value = (row.items_done if row.items_total else row.status == "completed") / total
            bar.bar_style = {"completed": "success", "failed": "danger"}.get(row.status, "")
        self.header.value = "<b>" + html.escape(state.headline()).replace("\n", "<br>") + "</b>"
        recent = [html.escape(f"fallback {f}") for f in state.fallbacks[-5:]]
        self.fallbacks.value = "<br>".join(recent)
        self.pause.disabled = state.status not in ACTIVE


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
        self._handle: Any = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._future: Future[api.RunResult] | None = None
        self._pending: Future[None] | None = None
        self._failed, self._store_ok, self._printed = False, self.widget or bool(store), False
        self._reader: Store | None = None
        self._text = None if self.widget else TextProgress(stream)
        self._view = _WidgetView(self._on_pause) if self.widget else None
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
            if final or self.state.status not in ACTIVE:
                self._update_display()

    def _sync_from_store(self, merge: bool) -> None:
        if self._store_ok:  # off the engine's thread: the run never waits for the view's reads
            self._pending = _SYNCS.submit(self._guard, self.refresh, self._view is not None, merge)

    # -- the store --------------------------------------------------------------------------
    @classmethod
    def attach(
        cls,
        store: Store | str | None,
        workflow_id: str,
        *,
        tenant: str | None = None,
        poll_s: float = 0.5,
        wait: bool | None = None,
        **kw: Any,
    ) -> WorkflowProgress:
        """Show a workflow from the store, finished or running elsewhere, and follow it.

        ``wait``: block until it stops (default: in text mode; widgets poll in the background).
        """
        progress = cls(store=store if store is not None else open_store(), tenant=tenant, **kw)
        progress.state.workflow_id = workflow_id
        progress.refresh()
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
        extras = step_context(st, workflow_id)
        with self._lock:
            before = self.state.table()
            self.state.load(summary, extras, merge)
            changed = before != self.state.table()
            self._dirty.update(self.state.steps)
        now, full = time.monotonic(), not self._printed or self.state.status not in ACTIVE
        if show and self._text is not None and changed and (full or now - self._last_flush > 2):
            print(self.state.table() if full else self.state.headline(), file=self._text.stream)
            self._printed, self._last_flush = True, now  # the table, then a line every 2 s
        elif show and self._view is not None:
            self._flush(final=self.state.status not in ACTIVE)

    def _poll(self, every_s: float) -> None:
        started = time.monotonic()
        while not self._stop.wait(every_s):
            try:
                self.refresh()
            except NyxError:
                return
            abandoned = self.state.status == "pending" and time.monotonic() - started > 30
            if self.state.status not in ACTIVE or abandoned:  # abandoned: nobody runs it
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

    # -- background runs --------------------------------------------------------------------
    @classmethod
    def start(cls, spec: Any = None, *, resume: str | None = None, **kw: Any) -> WorkflowProgress:
        """Run ``spec`` (or ``resume`` a workflow) in the background; ``result()`` waits for it."""
        store = kw.pop("store", None)
        kw["store"] = store if isinstance(store, Store) else open_store(store)
        progress = kw["on_event"] = cls(store=kw["store"], tenant=kw.get("tenant"))
        if resume is not None:
            return progress._background(lambda: api.resume(resume, **kw))
        return progress._background(lambda: api.run(spec, **kw))

    def _background(self, work: Callable[[], api.RunResult]) -> WorkflowProgress:
        future: Future[api.RunResult] = Future()

        def target() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to result()
                future.set_exception(exc)

        self._future = future
        threading.Thread(target=target, name="nyxnb-progress-run", daemon=True).start()
        return self

    def result(self, timeout: float | None = None) -> api.RunResult:
        """The background run's result (waits for it); raises what the run raised."""
        if self._future is None:
            raise RuntimeError("no background run: use WorkflowProgress.start()")
        return self._future.result(timeout)

    # -- pause and display ------------------------------------------------------------------
    def pause(self) -> None:
        """Ask the workflow to pause between items (what the Pause button does)."""
        if not self.state.workflow_id:
            raise RuntimeError("no workflow yet: the run has not started")
        api.pause(self.state.workflow_id, store=self.store, tenant=self.tenant)

    def _on_pause(self, button: Any) -> None:
        button.disabled, button.description = True, "Pausing"
        self.pause()

    def _bundle(self) -> dict[str, Any]:
        data: dict[str, Any] = {"text/plain": self.state.table()}
        if self._view is not None:
            view = {"model_id": self._view.box.model_id, "version_major": 2, "version_minor": 0}
            data["application/vnd.jupyter.widget-view+json"] = view
        return data

    def _show(self) -> None:
        from IPython.display import display

        if self._view is not None:
            self._view.render(self.state, None)
        self._handle = display(self._bundle(), raw=True, display_id=True)

    def _update_display(self) -> None:
        # the saved notebook keeps the final text, shown wherever the widget cannot render
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    def summary(self) -> str:
        """The step table as text: status, items, provider, tokens and cost."""
        if self._pending is not None:
            self._pending.exception(timeout=30)  # the last read of the store
        with self._lock:
            return self.state.table()

    def _ipython_display_(self) -> None:
        if self._view is not None:
            self._show()
        else:
            print(self.summary())


__all__ = ["ProgressState", "StepRow", "WorkflowProgress", "live_frontend"]
