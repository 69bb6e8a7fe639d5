"""Concise text progress for terminals, papermill and logs: one line per step, throttled fan-out.

On a TTY the current fan-out line is redrawn in place; elsewhere it prints at most one line per
``every_s`` seconds (and at 100%), so a 1,000-item fan-out does not flood a notebook's output.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from nyxnb import events as ev


def answered_by(provider: str | None, model: str | None, cached: bool = False) -> str:
    """Who answered, as shown: ``google gemini-2.5-flash``, plus ``cached`` for a cache hit."""
    who = " ".join(x for x in (provider, model) if x)
    return f"{who}, cached" if cached and who else ("cached" if cached else who)


def duration(seconds: float) -> str:
    """Seconds as read at a glance: ``0.2 s``, ``30 s``, ``5 min``, ``3.5 h``."""
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{round(seconds / 60, 1):g} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def tokens_text(tokens_in: int, tokens_out: int) -> str:
    """Tokens as read at a glance: ``9,465 in / 1,524 out``."""
    return f"{int(tokens_in):,} in / {int(tokens_out):,} out"


def money(cost_usd: float) -> str:
    """A cost: ``$0.0123``; ``—`` where nothing was priced (the offline provider, local models)."""
    return f"${cost_usd:,.4f}" if cost_usd else "—"


def clock(seconds: float) -> str:
    """Elapsed or remaining time as tqdm shows it: ``0:07``, ``12:31``, ``1:02:03``."""
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def pace(done: int, total: int, elapsed_s: float, unit: str = "it") -> str:
    """``0:12 · 2.1 it/s · ETA 0:05``: tqdm's elapsed, rate (items) and time left."""
    text = clock(elapsed_s)
    if done <= 0 or elapsed_s <= 0:
        return text
    rate = done / elapsed_s
    text += f" · {rate:.1f} {unit}/s" if rate >= 1 else f" · {1 / rate:.1f} s/{unit}"
    return text + (f" · ETA {clock((total - done) / rate)}" if total > done else "")


def batch_text(
    provider: str,
    batch_id: str,
    done: int,
    total: int,
    *,
    poll_s: float = 0.0,
    canceling: bool = False,
    error: str = "",
    age_s: float | None = None,
) -> str:
    """A live batch in one line: ``anthropic batch msgbatch_…: 120/300 done, polling every 30 s``.

    ``poll_s``: the wait before the next poll (0: not polled by this process); ``error``: the
    last poll failed; ``age_s``: seconds since submission (shown from the store).
    """
    line = f"{provider} batch {batch_id}: {done}/{total} done"
    line += ", canceling" if canceling else ""
    if error and poll_s:
        line += f", poll failed ({error}), retrying in {duration(poll_s)}"
    elif error:
        line += f", {error}"
    elif poll_s:
        line += f", polling every {duration(poll_s)}"
    return line + (f", submitted {duration(age_s)} ago" if age_s is not None else "")


#: What became of a batch's failed items, by ``batch_fallback``.
_THEN = {"live": "re-run live at full price", "resubmit": "resubmitted in a new batch"}


def batch_ended_text(
    provider: str, batch_id: str, succeeded: int, failed: int, then: str = ""
) -> str:
    """An ended batch in one line, and what became of its failed items:

    ``anthropic batch msgbatch_…: ended, 0 ok, 13 errored/expired/canceled; re-run live at
    full price``.
    """
    failures = f", {failed} errored/expired/canceled" if failed else ""
    after = f"; {_THEN[then]}" if failed and then in _THEN else ""
    return f"{provider} batch {batch_id}: ended, {succeeded} ok{failures}{after}"


def _spent(tokens_in: int, tokens_out: int, cost_usd: float) -> str:
    """``9,465 in / 1,524 out tokens · $0.0123`` (``—`` unpriced), as the widget's header."""
    return f"{tokens_text(tokens_in, tokens_out)} tokens · {money(cost_usd)}"


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return "#" * filled + "." * (width - filled)


class TextProgress:
    """Render run events as text; call it with each event."""

    def __init__(
        self, stream: TextIO | None = None, *, every_s: float = 2.0, live: bool | None = None
    ) -> None:
        self.stream = stream or sys.stdout
        self.every_s = every_s
        self.live = self.stream.isatty() if live is None else live
        self._last = 0.0
        self._inline = False
        self._total_steps = 0
        self._started: dict[str, str] = {}
        self._configured: dict[str, str | None] = {}
        self._generating_at = 0.0

    def __call__(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is not None:
            handler(event)

    def _line(self, text: str) -> None:
        if self._inline:
            self.stream.write("\n")
            self._inline = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _on_workflow_started(self, e: ev.WorkflowStarted) -> None:
        self._total_steps = e.total_steps
        verb = "resuming" if e.resumed else "running"
        steps = f": {e.total_steps} steps, #0-#{e.total_steps - 1}" if e.total_steps else ""
        self._line(f"{verb} {e.name} [{e.workflow_id}] on {e.project}{steps}")

    def _step(self, order: int) -> str:
        """A step by its ``order``, numbered as in the widget, ``steps_df`` and ``nyxnb show``."""
        return f"#{order}"

    def _on_step_started(self, e: ev.StepStarted) -> None:
        self._started[e.name] = ", ".join(x for x in (e.step_type, e.persona) if x)
        self._configured[e.name] = e.provider
        if e.total_items:
            done = f", {e.done_items} already done" if e.done_items else ""
            via = f", {e.provider}" if e.provider else ""
            self._line(
                f"  {self._step(e.order)} {e.name} ({self._started[e.name]}{via}): "
                f"{e.total_items} items{done}"
            )

    def _on_fan_out_progress(self, e: ev.FanOutProgress) -> None:
        now = time.monotonic()
        final = e.completed >= e.fan_out_total
        if not final and now - self._last < (0.1 if self.live else self.every_s):
            return
        self._last = now
        text = (
            f"      {_bar(e.completed, e.fan_out_total)} {e.completed}/{e.fan_out_total}"
            f"  item {e.item_idx} {e.fan_out_heading[:40]}"
        )
        who = answered_by(e.provider, e.model, e.cached)
        text += f" ({who})" if who else ""
        if self.live:
            self.stream.write("\r" + text.ljust(90))
            self.stream.flush()
            self._inline = not final
            if final:
                self.stream.write("\n")
        else:
            self._line(text)

    def _on_step_completed(self, e: ev.StepCompleted) -> None:
        if e.skipped:
            self._line(f"  {self._step(e.order)} {e.name}: already completed, skipped")
            return
        who = self._started.get(e.name, e.step_type)
        answered = answered_by(e.provider, e.model, e.cached)
        configured = (self._configured.get(e.name) or "").partition(":")[0]
        if e.provider and configured and configured not in e.provider.split(", "):
            answered += f" (fallback from {configured})"
        elif e.cached_items and not e.cached:
            answered += f", {e.cached_items} items cached"
        who += f", {answered}" if answered else ""
        spent = e.input_tokens or e.output_tokens
        tokens = f" · {_spent(e.input_tokens, e.output_tokens, e.cost_usd)}" if spent else ""
        self._line(f"  {self._step(e.order)} {e.name} ({who}) done{tokens}")

    def _on_step_failed(self, e: ev.StepFailed) -> None:
        self._line(f"      FAILED: {e.error}")

    def _on_provider_fallback(self, e: ev.ProviderFallback) -> None:
        item = f" item {e.item_index}" if e.item_index is not None else ""
        self._line(
            f"      fallback{item}: {e.from_provider} ({e.reason}) -> "
            f"{e.to_provider or 'none left'}"
        )

    def _on_rate_limited(self, e: ev.RateLimited) -> None:
        self._line(f"      {e.summary} ({e.wait_s:.1f}s)")

    def _on_generating(self, e: ev.Generating) -> None:
        now = time.monotonic()
        if e.waiting_s is None and now - self._generating_at < self.every_s:
            return  # a silent provider is always named; streamed progress is throttled
        self._generating_at = now
        self._line(f"      {e.summary}")

    def _on_batch_submitted(self, e: ev.BatchSubmitted) -> None:
        verb = "re-adopted" if e.adopted else "submitted"
        self._line(f"      {e.provider} batch {e.batch_id}: {verb}, {e.items} items")

    def _on_batch_progress(self, e: ev.BatchProgress) -> None:
        line = batch_text(
            e.provider,
            e.batch_id,
            e.done,
            e.total,
            poll_s=e.poll_s,
            canceling=e.canceling,
            error=e.error,
        )
        self._line(f"      {line}")

    def _on_batch_ended(self, e: ev.BatchEnded) -> None:
        line = batch_ended_text(e.provider, e.batch_id, e.succeeded, e.failed, e.then)
        self._line(f"      {line}")

    def _on_workflow_paused(self, e: ev.WorkflowPaused) -> None:
        self._line(f"paused; continue with: nyxnb resume {e.workflow_id}")

    def _on_workflow_completed(self, e: ev.WorkflowCompleted) -> None:
        spent = _spent(e.input_tokens, e.output_tokens, e.cost_usd)
        self._line(f"completed in {clock(e.seconds)}: {spent}")

    def _on_workflow_failed(self, e: ev.WorkflowFailed) -> None:
        self._line(f"failed: {e.error}\nfix the cause, then: nyxnb resume {e.workflow_id}")
