"""Creating one provider batch: the classified policy of live calls, and never paying twice.

A create fails like a live call, and the failure's kind decides (the run's
:class:`~nyxnb.engine.calls.chain.RetryPolicy`; :func:`retry_delay`):

- ``rate_limited``: create again once the provider's batch gate (:mod:`nyxnb.engine.batch.gate`)
  lets the next request through: after the hint, else a backoff, one probe for every run of the
  process; given up after ``max_wait_s`` from the first 429; never "down";
- transient (5xx, 529, a timeout, a dropped connection): bounded retries with backoff;
- ``exhausted`` / ``auth``: the provider is marked down for the run (its live calls skip it too);
- anything else, or retries used up: this provider's batch is given up; the caller moves down
  the chain (the next provider's batch, else the items run live).

Every attempt has its own ``provider_batches`` row, committed with one ``sent`` ledger row per
request (at the batch price) before the provider is asked; the row's id labels the batch
(:meth:`~nyxnb.providers.batch_base.BatchApi.find`).  A failure that leaves it unknown whether
the provider created the batch (a timeout, a dropped connection, a 5xx) is looked up by that
label before anything is created again: a batch found is adopted, not paid twice.  When the
lookup itself fails the row stays ``submitting`` and the workflow pauses; the next run looks
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nyxnb.engine.batch.gate import gate_of, through
from nyxnb.engine.calls.chain import ProviderPool, RetryPolicy
from nyxnb.engine.calls.governor import WaitTooLong
from nyxnb.engine.context import Paused as PauseSignal
from nyxnb.engine.context import RunContext, estimate_usd
from nyxnb.engine.durable import records
from nyxnb.engine.durable.rows import StepRow
from nyxnb.errors import ErrorKind, ProviderError
from nyxnb.providers.base import TRANSIENT_KINDS, CompletionRequest
from nyxnb.providers.batch_base import BatchApi
from nyxnb.store.models import BATCH_OPEN, utcnow

#: Failures after which the provider may have created the batch anyway: look before retrying.
AMBIGUOUS_KINDS = frozenset({"timeout", "connection", "server"})
#: Failures that mark a provider down for the run (account level: live calls skip it too).
DOWN_KINDS = frozenset({"exhausted", "auth"})


@dataclass(frozen=True)
class Created:
    """A batch the provider holds: its ``provider_batches`` row and batch id."""

    row_id: str
    batch_id: str
    sent: dict[int, str]  # item index -> its 'sent' ledger row
    found: bool = False  # created by an attempt that failed, found by its label


@dataclass(frozen=True)
class GaveUp:
    """This provider's batch is given up for the run: why."""

    kind: str
    message: str


class Paused:
    """A pause came first, or a lookup could not say whether the batch exists (resume asks)."""


CreateOutcome = Created | GaveUp | Paused


def retry_delay(policy: RetryPolicy, exc: ProviderError, tries: int) -> float | None:
    """Seconds before creating again after failure number ``tries``; None: give up.

    A 429 is not counted here: the batch gate holds the next request (see the module's doc).
    """
    if exc.kind in TRANSIENT_KINDS and tries < policy.max_attempts:
        return policy.delay(tries, exc.retry_after)
    return None


class BatchCreate:
    """One batch of ``requests`` to provider ``name``, created under the policy above."""

    def __init__(
        self,
        runner: RunContext,
        step: StepRow,
        api: BatchApi,
        model: str,
        requests: Sequence[tuple[str, int, CompletionRequest]],
    ) -> None:
        self.runner, self.step, self.api, self.model = runner, step, api, model
        self.requests = requests  # (custom id, item index, request)
        self.name = api.name
        self.pool: ProviderPool = runner.pool

    async def run(self) -> CreateOutcome:
        """Create the batch; what came of it."""
        tries, limited_until = 0, None  # failures; the end of the wait after the first 429
        while True:
            max_wait = self.pool.retry.max_wait_s
            if limited_until is not None:
                max_wait = max(limited_until - time.monotonic(), 0.0)
            if gate_of(self.api.provider).held_for() > max_wait:  # no row for a hopeless wait
                return GaveUp(ErrorKind.RATE_LIMITED, _too_long(self.pool.retry.max_wait_s))
            row_id, sent = self._commit_row()
            try:
                batch_id = await self._submit(row_id, max_wait)
            except (PauseSignal, WaitTooLong) as stop:  # nothing was sent
                records.cancel_batch(self.runner.store, row_id, list(sent.values()))
                if isinstance(stop, PauseSignal):
                    return Paused()
                return GaveUp(ErrorKind.RATE_LIMITED, _too_long(self.pool.retry.max_wait_s))
            except ProviderError as exc:
                outcome = await self._failed(row_id, sent, exc)
                if outcome is not None:
                    return outcome
                if exc.kind == ErrorKind.RATE_LIMITED:  # the gate holds the next attempt
                    limited_until = limited_until or time.monotonic() + max_wait
                    continue
                tries += 1
                delay = retry_delay(self.pool.retry, exc, tries)
                if delay is None:
                    if exc.kind in DOWN_KINDS:
                        self.pool.mark_down(self.name, exc.kind, exc.message)
                    return GaveUp(exc.kind, exc.message)
                if not await self._sleep(delay):
                    return Paused()
                continue
            self._opened(row_id, batch_id)
            return Created(row_id, batch_id, sent)

    async def _submit(self, row_id: str, max_wait_s: float) -> str:
        """Create the batch (labelled ``row_id``) through the provider's batch gate."""
        requests = [(cid, request) for cid, _, request in self.requests]
        return await through(
            self.api.provider,
            lambda: self.api.submit(requests, tag=row_id),
            self.runner.pause_event,
            max_wait_s,
        )

    def _commit_row(self) -> tuple[str, dict[int, str]]:
        """The attempt's ``submitting`` row and its requests' ``sent`` rows, in one commit."""
        rows = [
            records.sent_row(
                self.step,
                idx,
                self.name,
                self.model,
                estimate_usd(self.name, self.model, request, batch=True),
                tier="batch",
            )
            for _, idx, request in self.requests
        ]
        cids = [cid for cid, _, _ in self.requests]
        row_id = records.insert_batch(
            self.runner.store, self.step, self.name, self.model, cids, rows
        )
        return row_id, {int(r["item_idx"]): str(r["id"]) for r in rows}

    async def _failed(
        self, row_id: str, sent: dict[int, str], exc: ProviderError
    ) -> CreateOutcome | None:
        """Settle a failed attempt's row: adopted if the provider has it, else canceled."""
        if exc.kind in AMBIGUOUS_KINDS:
            try:
                found = await through(
                    self.api.provider,
                    lambda: self.api.find(row_id),
                    self.runner.pause_event,
                    self.pool.retry.max_wait_s,
                )
            except (ProviderError, PauseSignal, WaitTooLong):  # cannot tell: a resume looks
                return Paused()
            if found is not None:
                self._opened(row_id, found)
                return Created(row_id, found, sent, found=True)
        records.cancel_batch(self.runner.store, row_id, list(sent.values()))
        return None

    def _opened(self, row_id: str, batch_id: str) -> None:
        store, now = self.runner.store, utcnow()
        records.update_batch(store, row_id, batch_id=batch_id, state=BATCH_OPEN, submitted_at=now)

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a pause comes first (then False)."""
        pause = self.runner.pause_event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pause.wait(), seconds)
        return not pause.is_set()


def _too_long(max_wait_s: float) -> str:
    return (
        f"the batch API stayed rate limited past max_wait_s ({max_wait_s:g} s); "
        "the items go down the chain"
    )
