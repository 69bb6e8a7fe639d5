"""Wait for one provider batch to end: backoff, transient errors, the deadline, a cancel.

The wait between polls of a batch's status grows from ``batch_poll.initial_s`` by ``multiplier``
up to ``max_s`` (:class:`Backoff`; by default 5 s to 5 min, about 300 polls a day). A poll that
fails transiently (:class:`~nyxnb.errors.ProviderUnavailable`: 429, 5xx, a timeout, a dropped
connection) is retried on the same schedule (no sooner than the provider's retry-after), and
every poll waits at the provider's batch gate (:mod:`nyxnb.engine.batch.gate`: after a 429 one
probe per interval for every batch the process waits on, not one per batch); after
``max_outage_s`` of nothing but failed polls the workflow pauses with the batch row open, so
``nyxnb resume`` polls the same batch again. ``deadline_h`` after its submission the batch is
cancelled. A cancel asked elsewhere (:func:`nyxnb.engine.batch.submit.cancel_batches`: ``nyxnb
cancel-batch``, the widget's *Cancel batch*) marks the row ``canceling``; the wait looks at the
row every :data:`WAKE_S`, so it polls at once and the batch's finished items are ingested.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from nyxnb import events as ev
from nyxnb.engine.batch.gate import through
from nyxnb.engine.calls.governor import WaitTooLong
from nyxnb.engine.context import Paused, RunContext
from nyxnb.engine.durable import records
from nyxnb.engine.durable.rows import StepRow
from nyxnb.errors import ProviderUnavailable, one_line
from nyxnb.providers.batch_base import BatchApi, BatchStatus
from nyxnb.spec import BatchPoll
from nyxnb.store.models import BATCH_CANCELING, aware, utcnow

#: Seconds between two looks at the batch's row (for a cancel) while a wait lasts.
WAKE_S = 1.0


def deadline_passed(submitted: datetime, hours: float, now: datetime) -> bool:
    """True once ``hours`` have passed since ``submitted``.

    Never raises: a deadline past the calendar's end (``1e9`` hours, infinity, from a spec
    frozen before ``deadline_h`` was bounded) never passes; a nan one neither.
    """
    try:
        return now > submitted + timedelta(hours=hours)
    except (OverflowError, ValueError):  # beyond datetime's range, or nan
        return False


class Backoff:
    """Poll delays: ``initial_s``, then times ``multiplier`` each poll, capped at ``max_s``."""

    def __init__(self, poll: BatchPoll) -> None:
        self.poll, self.delay = poll, poll.initial_s

    def next(self) -> float:
        """The delay before the next poll (and grow the one after)."""
        current = self.delay
        self.delay = min(self.delay * self.poll.multiplier, self.poll.max_s)
        return current

    def peek(self) -> float:
        """The delay the next :meth:`next` returns."""
        return self.delay

    def reset(self) -> None:
        """Back to ``initial_s`` (a cancel was asked: the batch should end soon)."""
        self.delay = self.poll.initial_s


class BatchWait:
    """Poll one open batch (a ``provider_batches`` row with a batch id) until it ends."""

    def __init__(
        self, runner: RunContext, step: StepRow, api: BatchApi, row: records.BatchRow
    ) -> None:
        assert row.batch_id is not None
        self.runner, self.step, self.api, self.row = runner, step, api, row
        self.batch_id: str = row.batch_id
        self.poll = runner.spec.defaults.batch_poll
        self.backoff = Backoff(self.poll)
        self.canceling = row.state == BATCH_CANCELING
        self.last = BatchStatus(False, {})
        self.failing_since: float | None = None

    async def run(self) -> bool:
        """True once the provider says the batch ended; False if the workflow pauses first."""
        while True:
            try:
                status = await self._status()
            except Paused:
                return False
            except (ProviderUnavailable, WaitTooLong) as exc:
                wait = self._failed_poll(exc)
                if wait is None:
                    self.runner.pause_event.set()  # the workflow pauses, the batch stays open
                    return False
            else:
                self.failing_since = None
                if self._polled(status):
                    return True
                await self._past_deadline()
                wait = self.backoff.next()
            if not await self._sleep(wait):
                return False

    async def _status(self) -> BatchStatus:
        """One poll, through the batch gate (waiting there at most what is left of the outage
        budget, ``max_outage_s``)."""
        left = self.poll.max_outage_s
        if self.failing_since is not None:
            left -= time.monotonic() - self.failing_since
        return await through(
            self.api.provider,
            lambda: self.api.status(self.batch_id),
            self.runner.pause_event,
            max(left, 0.0),
        )

    def _polled(self, status: BatchStatus) -> bool:
        """Record a poll's counts and say so; True if the batch ended."""
        self.last = status
        records.update_batch(self.runner.store, self.row.id, counts=status.counts)
        self._progress(0.0 if status.ended else self.backoff.peek())
        return status.ended

    def _progress(self, poll_s: float, error: str = "") -> None:
        self.runner.emit(
            ev.BatchProgress(
                *self.runner.at(self.step),
                provider=self.row.provider,
                batch_id=self.batch_id,
                done=self.last.done,
                total=len(self.row.custom_ids),
                counts=self.last.counts,
                poll_s=poll_s,
                canceling=self.canceling,
                error=error,
            )
        )

    def _failed_poll(self, exc: ProviderUnavailable | WaitTooLong) -> float | None:
        """The wait before polling again after ``exc``; None when the outage lasted too long."""
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        if isinstance(exc, WaitTooLong):  # the gate holds past what the outage may last
            error = f"{self.row.provider}: the batch API is rate limited past max_outage_s"
            self.failing_since = now - self.poll.max_outage_s
        else:
            error = one_line(exc, 300)
        if now - self.failing_since >= self.poll.max_outage_s:
            minutes = (now - self.failing_since) / 60
            resume = f"`nyxnb resume {self.runner.workflow_id}`"
            note = f"polls failed for {minutes:.1f} min: pausing, the batch stays open ({resume})"
            self._progress(0.0, f"{error}; {note}")
            return None
        hint = exc.retry_after if isinstance(exc, ProviderUnavailable) else None
        wait = max(self.backoff.next(), hint or 0.0)
        self._progress(wait, error)
        return wait

    async def _past_deadline(self) -> None:
        """Cancel the batch once ``deadline_h`` passed since its submission (once)."""
        if self.canceling:
            return
        submitted = aware(self.row.submitted_at) or utcnow()
        if not deadline_passed(submitted, self.poll.deadline_h, utcnow()):
            return
        try:
            await through(
                self.api.provider,
                lambda: self.api.cancel(self.batch_id),
                self.runner.pause_event,
                self.poll.max_outage_s,
            )
        except (ProviderUnavailable, WaitTooLong, Paused):
            return  # asked again after the next poll (a pause is seen by the next wait)
        records.mark_canceling(self.runner.store, self.step.workflow_id, self.batch_id)
        self.canceling = True
        self.backoff.reset()

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, less if a cancel is asked; False if a pause came first."""
        pause, end = self.runner.pause_event, time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pause.wait(), min(left, WAKE_S))
            if pause.is_set():
                return False
            if not self.canceling and self._cancel_asked():
                self.canceling = True
                self.backoff.reset()
                return True
        return True

    def _cancel_asked(self) -> bool:
        try:
            return records.batch_state(self.runner.store, self.row.id) == BATCH_CANCELING
        except SQLAlchemyError:  # the store blinked: look again in a second
            return False
