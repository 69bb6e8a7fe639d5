"""Live progress of a workflow in a notebook: ipywidgets when a frontend watches, text otherwise.

    progress = WorkflowProgress(store=store)                  # displays itself
    nyxnb.run(spec, tenant="nyx", project="BRbase", store=store, on_event=progress)

    WorkflowProgress.attach(store, workflow_id)               # a run in another process, or after
                                                              # a kernel restart: reads the store
    progress = WorkflowProgress.start(spec, tenant=..., project=..., store=store)
    progress.result()                                         # background run: Pause stays usable

A kernel handles one request at a time, so the Pause button of a blocking ``nyxnb.run`` cell is
only served after the cell ends; ``start`` (or ``attach``) keeps the kernel free for the click.

The view is chosen once, at construction: ipywidgets when a live frontend sent the running cell
(JupyterLab, Notebook and VS Code execute with ``allow_stdin=True``; papermill, nbconvert and nbval
with ``allow_stdin=False``), else :class:`~nyxnb.progress.TextProgress`.  ``NYXNB_PROGRESS=widget``
or ``text`` forces one.  Events only update plain state under a lock; widgets are redrawn at most
every ``interval_s`` (0.1 s), so a 1,000-item fan-out is not slowed.
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from . import api
from . import events as ev
from .errors import NyxError
from .models import LlmCall, WorkflowStep
from .progress import TextProgress
from .report import workflow_summary
from .store import Store, open_store

log = logging.getLogger(__name__)
ENV_MODE = "NYXNB_PROGRESS"
ACTIVE = ("pending", "running")
_COLORS = {
    "completed": "#2e7d32",
    "running": "#1565c0",
    "failed": "#c62828",
    "paused": "#ef6c00",
    "pending": "#757575",
}


def live_frontend() -> bool:
    """True when the running cell came from an interactive frontend that renders widgets."""
    mode = os.environ.get(ENV_MODE, "auto").strip().lower()
    if mode in ("widget", "text"):
        return mode == "widget"
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:  # plain Python or terminal IPython
        return False
    try:
        content = (kernel.get_parent("shell") or {}).get("content") or {}
    except Exception:  # older ipykernel: no get_parent(channel)
        content = {}
    return bool(content.get("allow_stdin", getattr(kernel, "_allow_stdin", False)))


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

    @property
    def items(self) -> str:
        """``done/total`` for fan-out steps, else empty."""
        return f"{self.items_done}/{self.items_total}" if self.items_total else ""

    @property
    def fraction(self) -> float:
        """Share of the step that is done, 0..1."""
        if self.items_total:
            return self.items_done / self.items_total
        return 1.0 if self.status == "completed" else 0.0

    def cells(self) -> tuple[str, ...]:
        """The row as text: order, name, type, persona, provider, status, items, heading."""
        who = (self.name, self.type, self.persona or "", self.provider or "")
        return (str(self.order + 1), *who, self.status, self.items, self.heading[:40])


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
    _run_tokens: list[float] = field(default_factory=lambda: [0, 0, 0.0])

    def totals(self) -> tuple[int, int, float]:
        """Input tokens, output tokens and cost so far."""
        rows = self.steps.values()
        return (
            int(sum(r.input_tokens for r in rows) + self.unattributed[0]),
            int(sum(r.output_tokens for r in rows) + self.unattributed[1]),
            sum(r.cost_usd for r in rows) + self.unattributed[2],
        )

    def _row(self, e: ev.StepEvent) -> StepRow:
        row = self.steps.get(e.order)
        if row is None or row.name != e.name:
            row = self.steps[e.order] = StepRow(e.order, e.name, e.step_type)
        return row

    def _add(self, row: StepRow, tokens_in: int, tokens_out: int, cost: float) -> None:
        row.input_tokens += tokens_in
        row.output_tokens += tokens_out
        row.cost_usd += cost
        for i, v in enumerate((tokens_in, tokens_out, cost)):
            self._run_tokens[i] += v

    def apply(self, e: ev.Event) -> StepRow | None:
        """Fold one event in; returns the row it touched, if any."""
        self.workflow_id = e.workflow_id
        if isinstance(e, ev.WorkflowStarted):
            self.name, self.status, self.error = e.name, "running", None
            self._run_tokens = [0, 0, 0.0]
        elif isinstance(e, ev.WorkflowCompleted | ev.WorkflowPaused | ev.WorkflowFailed):
            self._finish(e)
        elif isinstance(e, ev.StepEvent):
            return self._apply_step(e)
        return None

    def _finish(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkflowCompleted):
            self.status = "completed"
            # fan-out events may not carry tokens: book the run's remainder on the workflow
            for i, v in enumerate((e.input_tokens, e.output_tokens, e.cost_usd)):
                self.unattributed[i] += max(0, v - self._run_tokens[i])
        elif isinstance(e, ev.WorkflowPaused):
            self.status = "paused"
        elif isinstance(e, ev.WorkflowFailed):
            self.status, self.error = "failed", e.error
        for row in self.steps.values():
            if row.status == "running":
                row.status = "pending"

    def _apply_step(self, e: ev.StepEvent) -> StepRow:
        row = self._row(e)
        if isinstance(e, ev.StepStarted):
            row.status, row.persona, row.auto_generated = "running", e.persona, e.auto_generated
            row.provider = e.provider or row.provider
            row.items_total, row.items_done = e.total_items or 0, e.done_items
            row.heading = getattr(e, "heading", None) or row.heading
        elif isinstance(e, ev.FanOutProgress):
            row.status, row.items_done, row.items_total = "running", e.completed, e.fan_out_total
            row.heading, row.provider = e.fan_out_heading, e.provider or row.provider
            self._add(
                row,
                getattr(e, "input_tokens", 0),
                getattr(e, "output_tokens", 0),
                getattr(e, "cost_usd", 0.0),
            )
        elif isinstance(e, ev.StepCompleted):
            row.status, row.items_done = "completed", row.items_total
            row.provider = e.provider or row.provider
            if row.type == "fan-out":
                row.heading = ""
            self._add(row, e.input_tokens, e.output_tokens, e.cost_usd)
        elif isinstance(e, ev.StepFailed):
            row.status = "failed"
        elif isinstance(e, ev.ProviderFallback):
            item = f" item {e.item_index + 1}" if e.item_index is not None else ""
            self.fallbacks.append(
                f"{e.name}{item}: {e.from_provider} ({e.reason}) -> {e.to_provider or 'none left'}"
            )
            row.provider = e.to_provider or row.provider
        return row

    def load(self, summary: dict[str, Any], extras: dict[int, tuple[str, str | None]]) -> None:
        """Replace the state with a :func:`nyxnb.report.workflow_summary` of the store."""
        self.workflow_id, self.name = summary["id"], summary["name"]
        self.status, self.error = summary["status"], summary.get("error")
        self.unattributed = [0, 0, 0.0]
        steps: dict[int, StepRow] = {}
        for data in summary["steps"]:
            row = StepRow(**{k: v for k, v in data.items() if k in _ROW_FIELDS})
            row.heading, used = extras.get(row.order, ("", None))
            row.provider = None if row.type == "pattern-check" else used or row.provider
            steps[row.order] = row
        self.steps = steps
        t = summary.get("totals") or {}
        for i, key in enumerate(("input_tokens", "output_tokens", "cost_usd")):
            self.unattributed[i] = max(0, float(t.get(key) or 0) - self.totals()[i])

    def headline(self) -> str:
        """One line: name, status, steps done, tokens and cost."""
        done = sum(r.status == "completed" for r in self.steps.values())
        tin, tout, cost = self.totals()
        line = (
            f"{self.name or 'workflow'}: {self.status}, {done}/{len(self.steps)} steps, "
            f"{tin}+{tout} tokens, ${cost:.4f}"
        )
        return line + (f"\nerror: {self.error}" if self.error else "")

    def table(self) -> str:
        """The step table as aligned text (the view's text form)."""
        cols = ("#", "step", "type", "persona", "provider", "status", "items", "current")
        rows = [r.cells() for r in sorted(self.steps.values(), key=lambda r: r.order)]
        widths = [max(len(c), *(len(x[i]) for x in rows)) for i, c in enumerate(cols)]
        lines = [
            "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
            for line in [cols, *rows]
        ]
        return "\n".join([self.headline(), *lines, *(f"fallback {f}" for f in self.fallbacks)])


def _store_extras(store: Store, workflow_id: str) -> dict[int, tuple[str, str | None]]:
    """Per step order: the implementation prompt's feature, and the provider that answered last."""
    steps = select(WorkflowStep.order, WorkflowStep.type, WorkflowStep.config).where(
        WorkflowStep.workflow_id == workflow_id
    )
    used = (
        select(WorkflowStep.order, LlmCall.provider)
        .join(WorkflowStep)
        .where(LlmCall.workflow_id == workflow_id, LlmCall.outcome != "error")
        .order_by(LlmCall.created_at)
    )
    with store.engine.connect() as conn:
        providers = {order: provider for order, provider in conn.execute(used)}
        return {
            order: (
                str((config or {}).get("heading") or "") if kind == "implementation-prompt" else "",
                providers.get(order),
            )
            for order, kind, config in conn.execute(steps)
        }


def _reader(store: Store) -> Store:
    """A store for polling: on SQLite, reads without ``BEGIN IMMEDIATE`` so the run never waits."""
    db = store.url.database
    if store.dialect != "sqlite" or not db or db == ":memory:":
        return store
    engine = create_engine(
        store.url, poolclass=NullPool, connect_args={"timeout": 30, "check_same_thread": False}
    )
    return Store(engine)


class _WidgetView:
    """ipywidgets: a header with totals and a Pause button, a row per step, fallbacks."""

    WIDTHS = ("2.5em", "11em", "12em", "8em", "7em", "6.5em", "9em", "4.5em", "16em")

    def __init__(self, on_pause: Callable[[Any], None]) -> None:
        import ipywidgets as w

        self.w = w
        self.header = w.HTML()
        self.pause = w.Button(description="Pause", icon="pause", tooltip="pause between items")
        self.pause.on_click(on_pause)
        self.grid = w.VBox(
            [
                self._line(
                    ("#", "step", "type", "persona", "provider", "status", "", "items", "current"),
                    bold=True,
                )
            ]
        )
        self.fallbacks = w.HTML()
        self.box = w.VBox([w.HBox([self.header, self.pause]), self.grid, self.fallbacks])
        self.rows: dict[int, tuple[Any, ...]] = {}

    def _line(self, values: tuple[str, ...], bold: bool = False) -> Any:
        w = self.w
        cells = [
            w.HTML(
                f"<b>{html.escape(v)}</b>" if bold else html.escape(v), layout=w.Layout(width=wd)
            )
            for v, wd in zip(values, self.WIDTHS, strict=True)
        ]
        if not bold:  # the bar column
            cells[6] = w.FloatProgress(0.0, min=0.0, max=1.0, layout=w.Layout(width=self.WIDTHS[6]))
        return w.HBox(cells)

    def render(self, state: ProgressState, orders: set[int] | None) -> None:
        """Redraw the header and the rows in ``orders`` (all when None)."""
        for row in sorted(state.steps.values(), key=lambda r: r.order):
            if orders is not None and row.order not in orders and row.order in self.rows:
                continue
            if row.order not in self.rows:
                line = self._line(("",) * 9)
                self.rows[row.order] = line.children
                self.grid.children = [*self.grid.children, line]
            cells = self.rows[row.order]
            values = (str(row.order + 1), row.name, row.type, row.persona or "", row.provider or "")
            for cell, value in zip(cells[:5], values, strict=True):
                cell.value = html.escape(value)
            color = _COLORS.get(row.status, "#000")
            cells[5].value = f'<span style="color:{color}">{row.status}</span>'
            cells[6].value = row.fraction
            cells[6].bar_style = {"completed": "success", "failed": "danger"}.get(row.status, "")
            cells[7].value, cells[8].value = row.items, html.escape(row.heading[:60])
        self.header.value = "<b>{}</b>".format(html.escape(state.headline()).replace("\n", "<br>"))
        self.fallbacks.value = "<br>".join(
            f"fallback {html.escape(f)}" for f in state.fallbacks[-5:]
        )
        self.pause.disabled = state.status not in ACTIVE


class WorkflowProgress:
    """Progress of one workflow: call it with events (``on_event=``), or attach it to the store."""

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        tenant: str | None = None,
        display: bool = True,
        widget: bool | None = None,
        interval_s: float = 0.1,
        stream: Any = None,
    ) -> None:
        self.store = store if isinstance(store, Store) or store is None else open_store(store)
        self.tenant = tenant
        self.state = ProgressState()
        self.interval_s = interval_s
        self.widget = live_frontend() if widget is None else widget
        self._lock = threading.RLock()
        self._dirty: set[int] = set()
        self._last_flush = 0.0
        self._timer: threading.Timer | None = None
        self._handle: Any = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._future: Future[api.RunResult] | None = None
        self._failed, self._store_ok, self._printed = False, self.widget or bool(store), False
        self._reader: Store | None = None
        self._text = None if self.widget else TextProgress(stream)
        self._view = _WidgetView(self._on_pause) if self.widget else None
        if display and self._view is not None:
            self._show()

    # -- events -----------------------------------------------------------------------------
    def __call__(self, event: ev.Event) -> None:
        """Fold one engine event in (use as ``on_event=``); redraws are throttled."""
        try:
            self._on_event(event)
        except Exception:  # a progress view must never break the run it shows
            if not self._failed:
                log.exception("WorkflowProgress: cannot show %s", event.type)
            self._failed = True

    def _on_event(self, event: ev.Event) -> None:
        with self._lock:
            new = not isinstance(event, ev.StepEvent) or event.order not in self.state.steps
            row = self.state.apply(event)
            if row is not None:
                self._dirty.add(row.order)
        final = isinstance(event, ev.WorkflowCompleted | ev.WorkflowPaused | ev.WorkflowFailed)
        if self._text is not None:
            self._text(event)
        # the store knows every step (generated ones appear mid-run) and the exact totals
        if final or (new and self._text is None):
            self._sync_from_store()
        if self._text is not None:
            return
        urgent = not isinstance(event, ev.FanOutProgress) or event.completed >= event.fan_out_total
        self._schedule(urgent, final)

    def _schedule(self, urgent: bool, final: bool = False) -> None:
        wait = self.interval_s - (time.monotonic() - self._last_flush)
        if urgent or wait <= 0:
            self._flush(final)
        elif self._timer is None:
            self._timer = threading.Timer(wait, self._flush)
            self._timer.daemon = True
            self._timer.start()

    def _flush(self, final: bool = False) -> None:
        with self._lock:
            self._timer = None
            self._last_flush = time.monotonic()
            dirty, self._dirty = self._dirty, set()
            if self._view is not None:
                self._view.render(self.state, dirty)
            if final or self.state.status not in ACTIVE:
                self._update_display()

    def _sync_from_store(self) -> None:
        if self._store_ok:
            try:
                self.refresh(quiet=True, redraw=False)
            except NyxError:  # not the run's store: events alone will do
                self._store_ok = False

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
        """Show a workflow from the store and follow it until it stops running.

        Works for a run in another process and for a finished run (e.g. after a kernel
        restart).  ``wait`` blocks until the run stops; the default is to block in text mode
        and to poll in the background when widgets are shown.
        """
        progress = cls(store=store if store is not None else open_store(), tenant=tenant, **kw)
        progress.state.workflow_id = workflow_id
        progress.refresh()
        if progress.state.status in ACTIVE:
            progress._poller = threading.Thread(
                target=progress._poll, args=(poll_s,), name="nyxnb-progress-poll", daemon=True
            )
            progress._poller.start()
        if wait if wait is not None else not progress.widget:
            progress.wait()
        return progress

    def refresh(self, quiet: bool = False, redraw: bool = True) -> None:
        """Reload the workflow's state from the store and redraw."""
        if self._reader is None:
            self.store = self.store or open_store()
            self._reader = _reader(self.store)
        st = self._reader
        tenant_id = st.find_tenant(self.tenant).id if self.tenant else None
        summary = workflow_summary(
            st, self.state.workflow_id, tenant_id=tenant_id, with_items=False
        )
        extras = _store_extras(st, self.state.workflow_id)
        with self._lock:
            before = self.state.table()
            self.state.load(summary, extras)
            changed = before != self.state.table()
            self._dirty.update(self.state.steps)
        if self._text is not None and not quiet and changed:
            self._print_text()
        elif self._view is not None and redraw:
            self._flush(final=self.state.status not in ACTIVE)

    def _print_text(self) -> None:
        assert self._text is not None
        now, first = time.monotonic(), not self._printed
        finished = self.state.status not in ACTIVE
        if first or finished:
            print(self.state.table(), file=self._text.stream)
        elif now - self._last_flush >= self._text.every_s:
            print(self.state.headline(), file=self._text.stream)
        else:
            return
        self._printed, self._last_flush = True, now

    def _poll(self, every_s: float) -> None:
        started = time.monotonic()
        while not self._stop.wait(every_s):
            try:
                self.refresh()
            except NyxError:
                return
            if self.state.status == "pending" and time.monotonic() - started > 30:
                return  # created but nobody runs it
            if self.state.status not in ACTIVE:
                return

    def wait(self, timeout: float | None = None) -> ProgressState:
        """Block until the followed run stops (attach) or the background run ends (start)."""
        if self._future is not None:
            self._future.exception(timeout)
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
    def start(
        cls, spec: Any, *, tenant: str, project: str, store: Store | str | None = None, **kw: Any
    ) -> WorkflowProgress:
        """Run a workflow in the background with this view; ``result()`` waits for the end."""
        st = store if isinstance(store, Store) else open_store(store)
        progress = cls(store=st)
        progress._background(
            lambda: api.run(spec, tenant=tenant, project=project, store=st, on_event=progress, **kw)
        )
        return progress

    @classmethod
    def start_resume(
        cls, workflow_id: str, *, store: Store | str | None = None, **kw: Any
    ) -> WorkflowProgress:
        """Resume a workflow in the background with this view."""
        st = store if isinstance(store, Store) else open_store(store)
        progress = cls(store=st)
        progress._background(lambda: api.resume(workflow_id, store=st, on_event=progress, **kw))
        return progress

    def _background(self, work: Callable[[], api.RunResult]) -> None:
        future: Future[api.RunResult] = Future()

        def target() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to result()
                future.set_exception(exc)

        self._future = future
        threading.Thread(target=target, name="nyxnb-progress-run", daemon=True).start()

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
        data: dict[str, Any] = {"text/plain": self.summary()}
        if self._view is not None:
            data["application/vnd.jupyter.widget-view+json"] = {
                "model_id": self._view.box.model_id,
                "version_major": 2,
                "version_minor": 0,
            }
        return data

    def _show(self) -> None:
        from IPython.display import display

        if self._view is not None:
            self._view.render(self.state, None)
        self._handle = display(self._bundle(), raw=True, display_id=True)

    def _update_display(self) -> None:
        # the saved notebook keeps the final text, which shows when the widget cannot render
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    def summary(self) -> str:
        """The step table as text: status, items, provider, tokens and cost."""
        with self._lock:
            return self.state.table()

    def _ipython_display_(self) -> None:
        if self._view is not None:
            self._show()
        else:
            print(self.summary())

    def __repr__(self) -> str:
        return f"<WorkflowProgress {self.state.headline().splitlines()[0]}>"


__all__ = ["ProgressState", "StepRow", "WorkflowProgress", "live_frontend"]
