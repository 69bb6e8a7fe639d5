"""The ipywidgets view of a :class:`~nyxnb.notebook.state.ProgressState`, with its controls.

The buttons follow the workflow, not the clicks: Pause while it runs, Pausing once asked (the
engine stops between items), then Resume when the store says paused (or interrupted: a dead run
resumes), and Pause again once the resumed run starts. When nothing runs (finished, failed, not
yet started) Pause is disabled, so a late click has nothing to do and raises nothing. *Cancel
batch* shows while the workflow has a live provider batch (listed under the steps, one line
each, as the text progress words it) and says *Canceling* once the cancel was asked.

The buttons sit left of the header, so they never move as its text changes. Cells never wrap:
a long name ends in an ellipsis and shows whole on hover. With many steps the completed ones
collapse into one summary line (*all steps* shows them), so the running step stays in sight.
When the kernel is gone (restarted, shut down) JupyterLab marks every widget disconnected; the
view's own style then hides the dead buttons and the broken-link icons and says it is a static
copy, so what stays on screen is honest.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

from nyxnb.notebook.state import _HEAD, ProgressState, StepRow
from nyxnb.reports.summary import INTERRUPTED
from nyxnb.store.models import COMPLETED, FAILED, PAUSED, PENDING, RUNNING

_COLORS = {
    COMPLETED: "green",
    RUNNING: "royalblue",
    "batch": "darkviolet",
    FAILED: "crimson",
    PAUSED: "orange",
    INTERRUPTED: "crimson",
}
STALE_NOTE = "static copy of the progress widget (kernel restarted: re-run the attach cell)"
#: Collapse completed steps into one line from this many steps on.
COMPACT_FROM = 8
_STYLE = """<style>
.nyxnb-progress .nyxnb-row, .nyxnb-progress .nyxnb-head {overflow: hidden; flex-wrap: nowrap;}
.nyxnb-progress .nyxnb-row > .widget-inline-hbox, .nyxnb-progress .nyxnb-row > * {flex: 0 0 auto;}
.nyxnb-progress .nyxnb-row .widget-html, .nyxnb-progress .nyxnb-head .widget-html
  {overflow: hidden; flex: 0 0 auto;}
.nyxnb-progress .nyxnb-row .widget-html-content, .nyxnb-progress .nyxnb-head .widget-html-content
  {white-space: nowrap; overflow: hidden; text-overflow: ellipsis; min-width: 0; width: 100%;}
.nyxnb-progress .nyxnb-row {height: 1.9em; align-items: center;}
.nyxnb-progress .nyxnb-header .widget-html-content {white-space: nowrap;}
.nyxnb-progress .jupyter-widgets-disconnected::before,
.nyxnb-progress.jupyter-widgets-disconnected::before {content: none !important; display: none;}
.nyxnb-progress .nyxnb-stale {display: none;}
.nyxnb-progress.jupyter-widgets-disconnected .nyxnb-stale {display: block !important;}
.nyxnb-progress.jupyter-widgets-disconnected .nyxnb-live {display: none !important;}
.nyxnb-progress.jupyter-widgets-disconnected {opacity: 0.75;}
</style>"""


#: The static copy's own style: hidden while the widget before it renders (live, or dead after
#: a restart: the widget then says so itself); where the widget cannot render (a page reloaded
#: after the kernel went away: "model not found"), the copy shows and that error line does not.
_STATIC_STYLE = """<style>
.jp-OutputArea-child:has(.nyxnb-progress) + .jp-OutputArea-child .nyxnb-progress-static
  {display: none;}
.jp-OutputArea-child:has(+ .jp-OutputArea-child .nyxnb-progress-static)
  > .jp-OutputArea-output:not(:has(.nyxnb-progress)) {display: none;}
</style>"""


def static_html(state: ProgressState) -> str:
    """The widget's saved form: what a reader sees where the live widget cannot render."""
    table = html.escape(state.table())
    return (
        f'{_STATIC_STYLE}<div class="nyxnb-progress-static"><p><i>{html.escape(STALE_NOTE)}'
        f"</i></p><pre>{table}</pre></div>"
    )


def display_bundle(state: ProgressState, view: WidgetView | None) -> dict[str, Any]:
    """The widget's output: the view, and the table as text where widgets do not render."""
    data: dict[str, Any] = {"text/plain": state.table()}
    if view is not None:
        ref = {"model_id": view.box.model_id, "version_major": 2, "version_minor": 0}
        data["application/vnd.jupyter.widget-view+json"] = ref
    return data


def _cell(text: str, color: str | None = None) -> str:
    """One cell: escaped, the whole text on hover (the view clips it with an ellipsis)."""
    shown = html.escape(text)
    shown = f'<span style="color:{color}">{shown}</span>' if color else shown
    return f'<span title="{html.escape(text, quote=True)}">{shown}</span>' if text else ""


class WidgetView:
    """ipywidgets: Pause/Resume, a header with totals and timing, a row per step, batches."""

    WIDTHS = ("2.2em", "9.5em", "8.5em", "7.5em", "6em", "7em", "6.5em", "4em", "13em", "8em")
    BAR = "7em"

    def __init__(
        self,
        on_pause: Callable[[Any], None],
        on_resume: Callable[[Any], None],
        on_cancel: Callable[[Any], None] | None = None,
    ) -> None:
        import ipywidgets as w

        self.w = w
        self.header, self.fallbacks, self.note = w.HTML(), w.HTML(), w.HTML()
        self.batches, self.done_line = w.HTML(), w.HTML()
        #: One line for live calls (tokens so far, tok/s, a hung provider): the streaming line.
        self.stream = w.HTML()
        self.stale = w.HTML(f"<i>{html.escape(STALE_NOTE)}</i>")
        self.stale.add_class("nyxnb-stale")
        self.pause = w.Button(description="Pause", icon="pause", tooltip="pause between items")
        self.resume = w.Button(description="Resume", icon="play", tooltip="resume the workflow")
        self.cancel = w.Button(
            description="Cancel batch",
            icon="stop",
            tooltip="cancel the live provider batches: finished items are kept, "
            "the rest follows batch_fallback",
        )
        self.all_steps = w.ToggleButton(False, description="all steps", tooltip="show every step")
        self.all_steps.layout.width = "8em"
        self.pause.on_click(on_pause)
        self.resume.on_click(on_resume)
        self.all_steps.observe(lambda _: self._redo(), "value")
        if on_cancel is not None:
            self.cancel.on_click(on_cancel)
        for button, kind in ((self.pause, "pause"), (self.resume, "resume")):
            button.add_class(f"nyxnb-{kind}")
            button.layout.width = "8.5em"
        self.cancel.add_class("nyxnb-cancel-batch")
        self.pausing = self.resuming = self.canceling = False
        buttons = w.HBox([self.pause, self.resume, self.cancel])
        buttons.add_class("nyxnb-live")
        self.header.layout.flex = "1 1 auto"
        self.header.add_class("nyxnb-header")
        controls = w.HBox([buttons, self.header, self.note])
        head = self._line([f"<b>{h}</b>" for h in _HEAD], bar=None)
        head.add_class("nyxnb-head")
        self.grid = w.VBox([head])
        self.all_steps.add_class("nyxnb-live")
        self.compact_box = w.HBox([self.all_steps, self.done_line])
        self.box = w.VBox(
            [w.HTML(_STYLE), self.stale, controls, self.stream, self.compact_box, self.grid,
             self.batches, self.fallbacks]
        )  # fmt: skip
        self.box.add_class("nyxnb-progress")
        self.rows: dict[int, tuple[list[Any], Any, Any]] = {}
        self._state: ProgressState | None = None
        self.controls(PENDING)

    def _line(self, values: list[str], bar: Any) -> Any:
        w, widths = self.w, self.WIDTHS
        cells = [w.HTML(v, layout=w.Layout(width=wd)) for v, wd in zip(values, widths, strict=True)]
        bar = bar or w.HTML(layout=w.Layout(width=self.BAR))
        line = w.HBox([*cells[:7], bar, *cells[7:]])
        line.add_class("nyxnb-row")
        return line

    def render(self, state: ProgressState, orders: set[int] | None) -> None:
        """Redraw the header and the rows in ``orders`` (all when None)."""
        self._state, now = state, time.time()
        rows = sorted(state.steps.values(), key=lambda r: r.order)
        compact = len(rows) >= COMPACT_FROM and not self.all_steps.value
        for row in rows:
            if row.order not in self.rows:
                bar = self.w.FloatProgress(0.0, min=0.0, max=1.0, layout={"width": self.BAR})
                line = self._line([""] * len(_HEAD), bar)
                self.rows[row.order] = ([c for c in line.children if c is not bar], bar, line)
                self.grid.children = [*self.grid.children, line]
            hide = compact and row.status == COMPLETED
            self.rows[row.order][2].layout.display = "none" if hide else None
            if orders is None or row.order in orders or row.status in (RUNNING, "batch"):
                self._row(row, now)
        self._summary_line(rows, compact)
        shown = not compact or any(r.status != "completed" for r in rows)
        self.grid.children[0].layout.display = None if shown else "none"  # no empty table
        head, _, why = state.headline().partition("\n")
        color = _COLORS.get(state.status, "black") if why else "black"
        why_html = f'<br><span style="color:{color}">{html.escape(why)}</span>' if why else ""
        self.header.value = f"<b>{html.escape(head)}</b>{why_html}"
        self.stream.value = f"<small>{html.escape(state.stream_line)}</small>"
        self.stream.layout.display = None if state.stream_line else "none"
        recent = [html.escape(f"fallback {f}") for f in state.fallbacks[-5:]]
        self.fallbacks.value = "<br>".join(recent)
        lines = [html.escape(line) for line in state.batch_lines()]
        self.batches.value = "<br>".join(lines)
        self.controls(state.status)
        self.batch_controls(state)

    def _row(self, row: StepRow, now: float) -> None:
        cells, bar, _ = self.rows[row.order]
        for cell, value in zip(cells, row.cells(now), strict=True):
            cell.value = _cell(value)
        cells[6].value = _cell(row.status, _COLORS.get(row.status, "gray"))
        busy = not row.items_total and row.status == RUNNING  # one call: a full, pale bar
        done = row.items_done / row.items_total if row.items_total else 1.0 * busy
        bar.value = 1.0 if row.status == COMPLETED else done
        styles = {COMPLETED: "success", FAILED: "danger", INTERRUPTED: "danger"}
        bar.bar_style = "info" if busy else styles.get(row.status, "")

    def _summary_line(self, rows: list[StepRow], compact: bool) -> None:
        done = [r for r in rows if r.status == COMPLETED]
        self.compact_box.layout.display = None if len(rows) >= COMPACT_FROM else "none"
        if not compact or not done:
            self.done_line.value = ""
            return
        names = ", ".join(r.name for r in done)
        text = f"✔ {len(done)} completed: {names}"
        self.done_line.value = f'<span title="{html.escape(names, quote=True)}">' + (
            html.escape(text if len(text) < 110 else text[:109] + "…") + "</span>"
        )

    def _redo(self) -> None:
        if self._state is not None:
            self.render(self._state, None)

    def batch_controls(self, state: ProgressState) -> None:
        """Cancel batch while a batch is live; Canceling once asked (or the store says so)."""
        live = state.live_batches()
        self.canceling = self.canceling and bool(live)  # asked, the answer is on its way
        asked = self.canceling or (bool(live) and all(b.state == "canceling" for b in live))
        self.cancel.description = "Canceling" if asked else "Cancel batch"
        self.cancel.disabled = not live or asked
        self.cancel.layout.display = None if live else "none"

    def controls(self, status: str) -> None:
        """Pause -> Pausing -> (paused) Resume -> Resuming -> (running) Pause."""
        resumable = status in (PAUSED, INTERRUPTED)
        if status != RUNNING:
            self.pausing = False
        if not resumable:
            self.resuming = False
        self.pause.description = "Pausing" if self.pausing else "Pause"
        self.pause.disabled = status != RUNNING or self.pausing
        self.pause.layout.display = "none" if resumable else None
        self.resume.description = "Resuming" if self.resuming else "Resume"
        self.resume.disabled = self.resuming
        self.resume.layout.display = None if resumable else "none"

    def retire(self, why: str) -> None:
        """Another view of this workflow took over: no live buttons here, say where to look."""
        for button in (self.pause, self.resume, self.cancel):
            button.disabled = True
        self.say(why)

    def say(self, text: str) -> None:
        """A short note next to the buttons (why a click did nothing)."""
        self.note.value = f"<i>{html.escape(text)}</i>" if text else ""


__all__ = ["STALE_NOTE", "WidgetView", "display_bundle", "static_html"]
