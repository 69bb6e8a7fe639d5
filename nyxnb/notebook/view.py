"""The ipywidgets view of a :class:`~nyxnb.notebook.state.ProgressState`, with its controls.

The buttons follow the workflow, not the clicks: Pause while it runs, Pausing once asked (the
engine stops between items), then Resume when the store says paused, and Pause again once the
resumed run starts. When nothing runs (finished, failed, not yet started) Pause is disabled, so
a late click has nothing to do and raises nothing. *Cancel batch* shows while the workflow has a
live provider batch (listed under the steps, one line each, as the text progress words it) and
says *Canceling* once the cancel was asked, until the batches end.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from nyxnb.notebook.state import _HEAD, ProgressState

_COLORS = {
    "completed": "green",
    "running": "royalblue",
    "batch": "darkviolet",
    "failed": "crimson",
    "paused": "orange",
}
STALE_NOTE = "static copy of the progress widget (kernel restarted: re-run the attach cell)"


def static_html(state: ProgressState) -> str:
    """The widget's saved form: what a reader sees where the live widget cannot render."""
    table = html.escape(state.table())
    return (
        f'<div class="nyxnb-progress-static"><p><i>{html.escape(STALE_NOTE)}</i></p>'
        f"<pre>{table}</pre></div>"
    )


class WidgetView:
    """ipywidgets: a header with totals, Pause/Resume, a row per step, recent fallbacks."""

    WIDTHS = ("2.5em", "11em", "13.5em", "8em", "9em", "11em", "6.5em", "4.5em", "16em")

    def __init__(
        self,
        on_pause: Callable[[Any], None],
        on_resume: Callable[[Any], None],
        on_cancel: Callable[[Any], None] | None = None,
    ) -> None:
        import ipywidgets as w

        self.w = w
        self.header, self.fallbacks, self.note = w.HTML(), w.HTML(), w.HTML()
        self.batches = w.HTML()
        self.pause = w.Button(description="Pause", icon="pause", tooltip="pause between items")
        self.resume = w.Button(description="Resume", icon="play", tooltip="resume the workflow")
        self.cancel = w.Button(
            description="Cancel batch",
            icon="stop",
            tooltip="cancel the live provider batches: finished items are kept, "
            "the rest follows batch_fallback",
        )
        self.pause.on_click(on_pause)
        self.resume.on_click(on_resume)
        if on_cancel is not None:
            self.cancel.on_click(on_cancel)
        self.pause.add_class("nyxnb-pause")
        self.resume.add_class("nyxnb-resume")
        self.cancel.add_class("nyxnb-cancel-batch")
        self.pausing = self.resuming = self.canceling = False
        self.grid = w.VBox([self._line([f"<b>{h}</b>" for h in _HEAD], bar=None)])
        controls = w.HBox([self.header, self.pause, self.resume, self.cancel, self.note])
        self.box = w.VBox([controls, self.grid, self.batches, self.fallbacks])
        self.box.add_class("nyxnb-progress")
        self.rows: dict[int, tuple[list[Any], Any]] = {}
        self.controls("pending")

    def _line(self, values: list[str], bar: Any) -> Any:
        w, widths = self.w, self.WIDTHS
        cells = [w.HTML(v, layout=w.Layout(width=wd)) for v, wd in zip(values, widths, strict=True)]
        bar = bar or w.HTML(layout=w.Layout(width="9em"))
        return w.HBox([*cells[:7], bar, *cells[7:]])

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
            cells[6].value = f'<span style="color:{color}">{row.status}</span>'
            total = row.items_total or 1
            bar.value = (row.items_done if row.items_total else row.status == "completed") / total
            bar.bar_style = {"completed": "success", "failed": "danger"}.get(row.status, "")
        self.header.value = "<b>" + html.escape(state.headline()).replace("\n", "<br>") + "</b>"
        recent = [html.escape(f"fallback {f}") for f in state.fallbacks[-5:]]
        self.fallbacks.value = "<br>".join(recent)
        lines = [html.escape(line) for line in state.batch_lines()]
        self.batches.value = "<br>".join(lines)
        self.controls(state.status)
        self.batch_controls(state)

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
        if status != "running":
            self.pausing = False
        if status != "paused":
            self.resuming = False
        paused = status == "paused"
        self.pause.description = "Pausing" if self.pausing else "Pause"
        self.pause.disabled = status != "running" or self.pausing
        self.pause.layout.display = "none" if paused else None
        self.resume.description = "Resuming" if self.resuming else "Resume"
        self.resume.disabled = self.resuming
        self.resume.layout.display = None if paused else "none"

    def say(self, text: str) -> None:
        """A short note next to the buttons (why a click did nothing)."""
        self.note.value = f"<i>{html.escape(text)}</i>" if text else ""


__all__ = ["STALE_NOTE", "WidgetView", "static_html"]
