"""The plain state a progress view shows: one row per step, folded from events and the store.

What it shows is what happened, not what was configured: the provider and model that answered,
cache hits marked ``cached``, fallbacks, and the workflow's step count known from the start
(``WorkflowStarted.total_steps``), so the header never grows 1/1, 3/5, 6/19. Steps are numbered
by their ``order`` (from 0), as in ``steps_df``, ``nyxnb show`` and SQL. Timing is tqdm's:
elapsed, rate and ETA per fan-out and for the run; a dead run (lease expired, no runner) reads
``interrupted`` with the line that says how to resume, whatever its stored status (the store's
summary judges that: :func:`nyxnb.reports.summary.dead_since`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

from nyxnb import events as ev
from nyxnb.notebook.progress import (
    answered_by,
    batch_ended_text,
    batch_text,
    clock,
    money,
    pace,
    tokens_text,
)
from nyxnb.reports.summary import INTERRUPTED, BatchSummary, WorkflowSummary
from nyxnb.store.models import COMPLETED, FAILED, PAUSED, PENDING, QUEUED, RUNNING

_HEAD = ("#", "step", "type", "persona", "provider", "model", "status", "items", "time", "current")
#: Statuses in which a run is under way (or about to be): a view follows them.
ACTIVE = (PENDING, QUEUED, RUNNING)
#: Step statuses of work under way; when the run stops they say why it stopped.
_UNDER_WAY = (RUNNING, "batch")


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending with an ellipsis when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class StepRow:
    """What the view shows about one step."""

    order: int
    name: str
    type: str = "llm"
    persona: str | None = None
    provider: str | None = None  # configured until a call answers, then who answered
    model: str | None = None  # the model that answered (None until one did)
    status: str = PENDING
    items_done: int = 0
    items_total: int = 0  # fan-out items; 0 for single-call steps
    heading: str = ""  # current fan-out item, or the implementation prompt's feature
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reasoning_tokens: int = 0  # thinking tokens, a part of output_tokens
    auto_generated: bool = False
    cached: bool = False  # the step's answer (every item's, for a fan-out) came from the cache
    cached_items: int = 0  # fan-out items answered from the cache in this run
    started_s: float | None = None  # wall clock when it started running in this run
    done_at_start: int = 0  # items already done then (a resumed fan-out)
    took_s: float | None = None  # how long it ran, once completed in this run

    def timing(self, now: float | None = None) -> str:
        """Elapsed, rate and ETA of a running step (``0:12 · 2.1 it/s · ETA 0:05``)."""
        if self.took_s is not None:
            return clock(self.took_s)
        if self.started_s is None or self.status not in _UNDER_WAY:
            return ""
        elapsed = (now or time.time()) - self.started_s
        if not self.items_total:
            return clock(elapsed)
        return pace(self.items_done - self.done_at_start, self.items_total - self.done_at_start,
                    elapsed)  # fmt: skip

    def cells(self, now: float | None = None) -> tuple[str, ...]:
        """The row as text, in the columns of the table (the view clips, the text table too)."""
        items = f"{self.items_done}/{self.items_total}" if self.items_total else ""
        provider = answered_by(self.provider, None, self.cached)
        if self.cached_items and not self.cached:
            provider += f", {self.cached_items} cached"
        who = (self.name, self.type, self.persona or "", provider, self.model or "")
        return (str(self.order), *who, self.status, items, self.timing(now), self.heading)


_ROW_FIELDS = {f.name for f in fields(StepRow)}
#: A step whose items wait in a provider batch shows this status (a state of its own).
BATCH = "batch"


#: The batch id shown for a batch whose row is committed but not yet created at the provider.
SUBMITTING = "(submitting)"


@dataclass
class BatchLine:
    """One provider batch of the workflow, from batch events or the store's row."""

    provider: str
    batch_id: str
    order: int | None = None  # the step's
    total: int = 0
    done: int = 0
    poll_s: float = 0.0  # the wait before the next poll, when this process polls it
    state: str = "open"  # open | canceling | ended
    succeeded: int = 0
    failed: int = 0
    error: str = ""  # the last poll failed
    age_s: float | None = None  # seconds since submission (from the store)
    then: str = ""  # what its failed items do next (``batch_fallback``: live | resubmit)

    @property
    def live(self) -> bool:
        """Not ended: the provider may still be working on it, and it can be canceled."""
        return self.state != "ended"

    def text(self, age: bool = True) -> str:
        """``anthropic batch msgbatch_…: 120/300 done, polling every 30 s`` (as text progress).

        ``age=False`` leaves out "submitted N s ago" (it changes while nothing else does).
        """
        if not self.live:
            return batch_ended_text(
                self.provider, self.batch_id, self.succeeded, self.failed, self.then
            )
        return batch_text(
            self.provider,
            self.batch_id,
            self.done,
            self.total,
            poll_s=self.poll_s,
            canceling=self.state == "canceling",
            error=self.error,
            age_s=None if not age or self.poll_s or self.error else self.age_s,
        )

    @classmethod
    def of_store(cls, row: BatchSummary, then: str = "") -> BatchLine:
        """A batch of :func:`~nyxnb.reports.summary.workflow_summary` (``then``: its fallback)."""
        succeeded = int(row.counts.get("succeeded", 0))
        state = "canceling" if row.state == "canceling" else "open"
        return cls(
            row.provider,
            row.batch_id or SUBMITTING,
            row.order,
            row.items,
            row.done,
            state=state if row.live else "ended",
            succeeded=succeeded,
            failed=row.done - succeeded,
            age_s=row.age_s,
            then=then,
        )


@dataclass(frozen=True)
class Answered:
    """Who answered a step, from the ledger (``llm_calls``): providers and models, cache hits."""

    provider: str
    model: str
    calls: int
    cached: int


@dataclass
class ProgressState:
    """Plain state of one workflow, built from events and/or the store."""

    workflow_id: str = ""
    name: str = ""
    status: str = PENDING
    error: str | None = None
    total_steps: int = 0  # known when the run starts (generated steps included)
    steps: dict[int, StepRow] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    batches: dict[str, BatchLine] = field(default_factory=dict)  # by batch id, oldest first
    unattributed: list[float] = field(default_factory=lambda: [0, 0, 0.0])
    run_totals: list[float] = field(default_factory=lambda: [0, 0, 0.0])  # from this run's events
    note: str = ""  # why nothing runs it: "interrupted: no runner since ...; resume with ..."
    started_s: float | None = None  # wall clock when the run (this one, or the stored one) began
    ended_s: float | None = None
    #: The live calls in one line (tokens so far, tok/s, a hung provider named): the widget
    #: shows it under the header, the text form after it; "" shows nothing.
    stream_line: str = ""

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
            self.name, self.status, self.error, self.note = e.name, RUNNING, None, ""
            self.total_steps = max(self.total_steps, e.total_steps)
            self.run_totals, self.started_s, self.ended_s = [0, 0, 0.0], time.time(), None
        elif isinstance(e, ev.WorkflowCompleted):
            self.status = COMPLETED
            # fan-out events may not carry tokens: book the rest of the run on the workflow
            for i, v in enumerate((e.input_tokens, e.output_tokens, e.cost_usd)):
                self.unattributed[i] += max(0, v - self.run_totals[i])
        elif isinstance(e, ev.WorkflowPaused | ev.WorkflowFailed):
            self.status = PAUSED if isinstance(e, ev.WorkflowPaused) else FAILED
            self.error = getattr(e, "error", None)
        elif isinstance(e, ev.StepEvent):
            return self._apply_step(e)
        self.ended_s = time.time()
        self._settle()
        return None

    def _settle(self) -> None:
        """The run stopped: work under way says why (a paused fan-out says paused, not pending)."""
        if self.status in ACTIVE:
            return
        why = self.status if self.status in (PAUSED, INTERRUPTED) else PENDING
        for row in self.steps.values():
            partly = row.status == PENDING and 0 < row.items_done < row.items_total
            if row.status in _UNDER_WAY or partly:
                row.status = why
        for line in self.batches.values():  # nobody here polls them now
            line.poll_s, line.error = 0.0, ""

    def _apply_step(self, e: ev.StepEvent) -> StepRow:
        row = self.steps.get(e.order)
        if row is None or row.name != e.name:
            row = self.steps[e.order] = StepRow(e.order, e.name, e.step_type)
        if isinstance(e, ev.StepStarted):
            row.status, row.persona, row.auto_generated = RUNNING, e.persona, e.auto_generated
            row.provider = e.provider or row.provider
            row.items_total, row.items_done = e.total_items or 0, e.done_items
            row.started_s, row.done_at_start, row.took_s = time.time(), e.done_items, None
            row.heading = getattr(e, "heading", None) or row.heading
        elif isinstance(e, ev.FanOutProgress):
            row.status, row.items_done, row.items_total = RUNNING, e.completed, e.fan_out_total
            row.heading, row.provider = e.fan_out_heading, e.provider or row.provider
            row.model, row.cached_items = e.model or row.model, row.cached_items + e.cached
            tokens = [getattr(e, k, 0) for k in ("input_tokens", "output_tokens", "cost_usd")]
            self._add(row, *tokens)
            row.reasoning_tokens += e.reasoning_tokens
        elif isinstance(e, ev.StepCompleted):
            row.status, row.items_done = COMPLETED, row.items_total
            row.took_s = time.time() - row.started_s if row.started_s and not e.skipped else None
            if not e.skipped:
                row.provider, row.model = e.provider or row.provider, e.model or row.model
                row.cached, row.cached_items = e.cached, e.cached_items or row.cached_items
            if row.type == "fan-out":  # its tokens come per item, or with the run's totals
                row.heading = ""
            else:
                self._add(row, e.input_tokens, e.output_tokens, e.cost_usd)
                row.reasoning_tokens += e.reasoning_tokens
        elif isinstance(e, ev.StepFailed):
            row.status = FAILED
        elif isinstance(e, ev.ProviderFallback):
            item = f" item {e.item_index}" if e.item_index is not None else ""
            to = e.to_provider or "none left"
            self.fallbacks.append(f"{e.name}{item}: {e.from_provider} ({e.reason}) -> {to}")
            row.provider = e.to_provider or row.provider
        elif isinstance(e, ev.RateLimited | ev.Generating):
            row.heading = e.summary  # "waiting for openai: 600 rpm" until the next item lands
        elif isinstance(e, ev.BatchSubmitted | ev.BatchProgress | ev.BatchEnded):
            self._apply_batch(row, e)
        return row

    def _apply_batch(
        self, row: StepRow, e: ev.BatchSubmitted | ev.BatchProgress | ev.BatchEnded
    ) -> None:
        line = self.batches.get(e.batch_id)
        if line is None:
            line = self.batches[e.batch_id] = BatchLine(e.provider, e.batch_id, e.order)
        if isinstance(e, ev.BatchSubmitted):
            line.total, line.state = e.items, "open"
        elif isinstance(e, ev.BatchProgress):
            line.done, line.total, line.poll_s, line.error = e.done, e.total, e.poll_s, e.error
            line.state = "canceling" if e.canceling or line.state == "canceling" else "open"
        else:
            line.state, line.succeeded, line.failed = "ended", e.succeeded, e.failed
            line.then = e.then
            line.done, line.poll_s, line.error = e.succeeded + e.failed, 0.0, ""
        row.status = BATCH if line.live else RUNNING
        row.provider = e.provider or row.provider
        row.heading = f"batch {line.done}/{line.total}" if line.live else row.heading

    def live_batches(self) -> list[BatchLine]:
        """The batches not ended yet (what *Cancel batch* cancels)."""
        return [b for b in self.batches.values() if b.live]

    def mark_canceling(self, batch_ids: list[str]) -> None:
        """A cancel was asked for these batches."""
        for batch_id in batch_ids:
            if (line := self.batches.get(batch_id)) is not None and line.live:
                line.state = "canceling"

    def load(
        self,
        summary: WorkflowSummary,
        extras: dict[int, tuple[str, str | None]],
        merge: bool = False,
        answered: dict[int, Answered] | None = None,
    ) -> None:
        """Take a store summary as the state; ``merge`` (mid-run: events are newer) adds steps.

        ``answered`` (per step order, from the ledger) says who answered and what was cached.
        """
        self.workflow_id, self.name = summary.id, summary.name
        answered, before = answered or {}, self.steps
        if not merge:
            self.status, self.error = summary.shown_status, summary.error
            self.note, self.steps, self.unattributed = summary.note, {}, [0, 0, 0.0]
            started, ended = summary.started_at, summary.finished_at or summary.interrupted_since
            self.started_s = started.timestamp() if started else self.started_s
            self.ended_s = ended.timestamp() if ended and self.status not in ACTIVE else None
        self.total_steps = max(self.total_steps, summary.total_steps, len(summary.steps))
        for data in summary.steps:
            row = StepRow(**{k: getattr(data, k) for k in _ROW_FIELDS if hasattr(data, k)})
            row.heading, used = extras.get(row.order, ("", None))
            row.provider = None if row.type == "pattern-check" else used or row.provider
            if (who := answered.get(row.order)) is not None and row.type != "pattern-check":
                row.provider, row.model = who.provider, who.model
                row.cached = who.calls > 0 and who.cached == who.calls
                row.cached_items = who.cached if row.type == "fan-out" else 0
            timed = before.get(row.order)
            if timed is not None and timed.name == row.name and row.status == COMPLETED:
                row.took_s = timed.took_s  # the store has no clocks: keep what the events timed
            old = self.steps.get(row.order)
            if old is None or old.name != row.name or not merge:
                self.steps[row.order] = row
            else:
                old.heading = old.heading or row.heading
        self._load_batches(summary.batches, merge, summary.batch_fallback)
        if merge:
            return
        self._settle()
        totals = summary.totals
        for i, value in enumerate((totals.input_tokens, totals.output_tokens, totals.cost_usd)):
            self.unattributed[i] = max(0, float(value) - self.totals()[i])

    def _load_batches(self, rows: tuple[BatchSummary, ...], merge: bool, then: str) -> None:
        """The store's batches; mid-run (``merge``) the events' lines are newer and stay."""
        lines = [BatchLine.of_store(r, then) for r in rows]
        if not merge:
            self.batches = {}
        self.batches.pop(SUBMITTING, None)  # the store says what became of it
        for line in lines:
            self.batches.setdefault(line.batch_id, line)
        for line in self.live_batches():  # a step waiting on a batch shows it
            step = self.steps.get(line.order) if line.order is not None else None
            if step is not None and step.status == RUNNING:
                step.status, step.heading = BATCH, f"batch {line.done}/{line.total}"

    def headline(self, timing: bool = True) -> str:
        """One line: name, status, steps done, tokens, cost and time; then why it stopped.

        ``timing=False`` leaves the clock out (it changes while nothing else does).
        """
        done = sum(r.status == COMPLETED for r in self.steps.values())
        tokens_in, tokens_out, cost = self.totals()
        total = max(self.total_steps, len(self.steps))
        line = f"{self.name or 'workflow'}: {self.status}, {done}/{total} steps · "
        reasoning = sum(r.reasoning_tokens for r in self.steps.values())
        line += f"{tokens_text(tokens_in, tokens_out)} tokens"
        line += f" ({reasoning:,} reasoning)" if reasoning else ""
        line += f" · {money(cost)}"
        line += f" · {self.timing()}" if timing and self.started_s else ""
        why = self.note or (f"error: {self.error}" if self.error else "")
        if self.status == PAUSED and not why:
            why = f"paused{self._where()}; resume with `nyxnb resume {self.workflow_id}`"
        return line + (f"\n{why}" if why else "")

    def _where(self) -> str:
        """`` at step 1 (features, 4/13 items)``: the first step not completed."""
        rows = sorted(self.steps.values(), key=lambda r: r.order)
        row = next((r for r in rows if r.status != COMPLETED), None)
        if row is None:
            return ""
        items = f", {row.items_done}/{row.items_total} items" if row.items_total else ""
        return f" at step {row.order} ({row.name}{items})"

    def timing(self, now: float | None = None) -> str:
        """The run's elapsed time; while it runs, also steps per time and an ETA (tqdm-style)."""
        if self.started_s is None:
            return ""
        now = now or time.time()
        end = self.ended_s if self.ended_s and self.status not in ACTIVE else now
        elapsed = max(0.0, end - self.started_s)
        if self.status not in ACTIVE:
            return f"took {clock(elapsed)}"
        done = [r for r in self.steps.values() if r.took_s is not None]
        total = max(self.total_steps, len(self.steps))
        left = total - sum(r.status == COMPLETED for r in self.steps.values())
        text = f"elapsed {clock(elapsed)}"
        running = [r for r in self.steps.values() if r.status in _UNDER_WAY and r.items_total]
        eta = sum(r.took_s or 0 for r in done) / len(done) * left if done else None
        fan = running[0] if running else None
        if fan is not None and fan.started_s and fan.items_done > fan.done_at_start:
            rate = (fan.items_done - fan.done_at_start) / max(1e-9, now - fan.started_s)
            mean = sum(r.took_s or 0 for r in done) / len(done) if done else 0.0
            eta = (fan.items_total - fan.items_done) / rate + mean * (left - 1)
        if any(r.status == BATCH for r in self.steps.values()):
            eta = None  # a provider batch ends at the provider's pace: no honest estimate
        return text + (f" · ETA ~{clock(eta)}" if eta is not None and left else "")

    def table(self, ages: bool = True) -> str:
        """The headline and the step table as aligned text (the view's text form).

        ``ages=False`` leaves the batches' ages and the clocks out: what a change check compares.
        """
        now = time.time()
        rows = [
            (*r.cells(now)[:8], r.cells(now)[8] if ages else "", clip(r.heading, 40))
            for r in sorted(self.steps.values(), key=lambda r: r.order)
        ]
        widths = [max([len(c), *(len(x[i]) for x in rows)]) for i, c in enumerate(_HEAD)]
        lines = ["  ".join(map(str.ljust, x, widths)).rstrip() for x in [_HEAD, *rows]]
        fallbacks = [f"fallback {f}" for f in self.fallbacks]
        batches = self.batch_lines(ages=ages)
        live = [self.stream_line] if ages and self.stream_line else []
        return "\n".join([self.headline(timing=ages), *live, *lines, *batches, *fallbacks])

    def batch_lines(self, ended: int = 3, ages: bool = True) -> list[str]:
        """The live batches, then the last ``ended`` ones that ended, as text lines."""
        done = [b for b in self.batches.values() if not b.live][-ended:] if ended else []
        return [b.text(ages) for b in [*self.live_batches(), *done]]


__all__ = ["ACTIVE", "BATCH", "Answered", "BatchLine", "ProgressState", "StepRow", "clip"]
