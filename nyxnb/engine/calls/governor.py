"""Rate governors: each provider+model's request and token budget and an AIMD in-flight limit.

A call first waits for its governor (:meth:`Governor.acquire`): an in-flight slot, one request of
the per-minute request budget and its estimated tokens of the token budget.  Waiting is not an
attempt.  The budgets come from the spec or CLI (``defaults.limits``) or are learned from the
provider's answers: OpenAI ``x-ratelimit-*`` and Anthropic ``anthropic-ratelimit-*`` headers on
every answer, and Gemini's per-minute ``QuotaFailure`` in its 429s.  Each 429 halves the
in-flight limit and holds every call to the provider+model for its retry delay; each success
grows the limit back by about one per round of calls (additive increase, multiplicative
decrease).

The buckets are ``aiolimiter.AsyncLimiter`` leaky buckets.  aiolimiter was chosen over
pyrate-limiter because it is asyncio-native and tiny (one class, no dependencies): waiters are
woken in order by a timer, with no polling loop.  A limiter's rate is fixed when it is made, so
:class:`Bucket` builds a new one when the provider tells us its limit, carrying the level over
(only aiolimiter's public API is used).  pyrate-limiter's strengths (sync and async, Redis/SQL
backends) are not needed here: processes sharing a store share budgets through
:mod:`nyxnb.engine.calls.budget` (leases of a store row, cheaper than a backend round trip per
call).
A bucket holds one second of budget, so a per-minute limit is spent at its pace, never in a
burst at the start of the minute (providers enforce at that grain too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from nyxnb.engine.calls.budget import SharedBudget
from nyxnb.providers.classify import RateInfo

#: The in-flight limit starts at SLOW_START and doubles each round of answers until the first 429
#: (TCP's slow start: a provider that says nothing about its limits is not hit by the whole
#: fan-out at once); a 429 halves it, and it grows back by one per round of answers.
SLOW_START = 4
MAX_IN_FLIGHT = 256


@dataclass(frozen=True)
class Limits:
    """Configured limits of one provider (or provider+model); None means "learn it"."""

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None

    @classmethod
    def of(cls, spec: object) -> Limits:
        """Limits from a spec's ``LimitSpec`` (anything with ``rpm``/``tpm``/``concurrency``)."""
        return cls(
            getattr(spec, "rpm", None),
            getattr(spec, "tpm", None),
            getattr(spec, "concurrency", None),
        )

    def describe(self) -> str:
        """``600 rpm, 100000 tpm`` (what progress shows while waiting)."""
        parts = [f"{self.rpm:g} rpm" if self.rpm else "", f"{self.tpm:g} tpm" if self.tpm else ""]
        return ", ".join(p for p in parts if p) or f"{self.concurrency} in flight"


class WaitTooLong(Exception):  # noqa: N818 - a signal to fall back, not an error
    """Waiting for the governor would pass the run's ``max_wait_s``."""


@dataclass
class Ticket:
    """One admitted call: when it started and how long it waited."""

    started: float
    waited_s: float
    tokens: float


def _shape(per_min: float) -> tuple[float, float]:
    """``(max_rate, time_period)`` of a bucket holding one second of a per-minute budget."""
    per_s = per_min / 60
    return max(1.0, per_s), max(1.0, per_s) / per_s


class Bucket:
    """One budget: an ``aiolimiter.AsyncLimiter`` used through its public API only.

    aiolimiter fixes a limiter's rate when it is made and keeps its level to itself, so a bucket
    keeps its own account of the level (the same leak, on the same monotonic clock).  A new
    rate builds a new limiter, charged with the level carried over, and wakes every waiter of
    the old one to queue at the new one; a waiter the old limiter admitted meanwhile queues
    again (never more than the new rate passes).  Budget the provider says is spent already
    is charged to the limiter on the next :meth:`acquire`.
    """

    def __init__(self, per_min: float) -> None:
        self.per_min = per_min
        self.max_rate, period = _shape(per_min)
        self._per_s = self.max_rate / period
        self._limiter = AsyncLimiter(self.max_rate, period)
        self._moved = asyncio.Event()  # set when the limiter is replaced
        self._level, self._at = 0.0, time.monotonic()
        self._owed = 0.0  # in the level, not yet charged to the limiter

    def level(self) -> float:
        """How full the bucket is now (``max_rate`` is full)."""
        now = time.monotonic()
        self._level = max(0.0, self._level - (now - self._at) * self._per_s)
        self._at = now
        return self._level

    def retune(self, per_min: float) -> None:
        """Adopt a new rate: a new limiter, charged with the level carried over."""
        if per_min == self.per_min:
            return
        carried = self.level()
        self.per_min = per_min
        self.max_rate, period = _shape(per_min)
        self._per_s = self.max_rate / period
        self._limiter = AsyncLimiter(self.max_rate, period)
        self._level = self._owed = min(carried, self.max_rate)
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()  # the old limiter's waiters queue again at the new one

    def spend_to(self, remaining: float | None, age_s: float = 0.0) -> None:
        """Lower the free budget to what the provider says remains (never raise it).

        The provider counted ``remaining`` when it admitted the call, up to ``age_s`` ago; it
        has refilled since, and calls sent meanwhile are charged here already, so the figure
        is aged by the refill before it is compared.
        """
        if remaining is None:
            return
        free = self.max_rate - self.level()
        aged = max(min(remaining + age_s * self._per_s, self.max_rate), 0.0)
        if aged < free:
            self._level += free - aged
            self._owed += free - aged

    async def acquire(self, amount: float) -> None:
        """Wait until ``amount`` (at most ``max_rate``) fits the budget, then spend it."""
        while True:
            limiter, moved = self._limiter, self._moved
            if self._owed:
                owed, self._owed = min(self._owed, limiter.max_rate), 0.0
                await limiter.acquire(owed)  # fits at once unless spent elsewhere meanwhile
                if limiter is not self._limiter:
                    continue  # replaced meanwhile: the new one carries the level
            spend = min(amount, limiter.max_rate)
            if limiter.has_capacity(spend):
                await limiter.acquire(spend)  # has room: returns without waiting
            elif not await _wait(limiter, moved, spend):
                continue  # the rate changed while waiting: queue at the new limiter
            if limiter is not self._limiter:
                continue  # admitted by a replaced limiter: the new rate decides
            self.level()
            self._level += spend
            return


async def _wait(limiter: AsyncLimiter, moved: asyncio.Event, amount: float) -> bool:
    """Spend ``amount`` at ``limiter`` once it fits (True), or stop when it is replaced."""
    waiting = asyncio.ensure_future(limiter.acquire(amount))
    replaced = asyncio.ensure_future(moved.wait())
    try:
        await asyncio.wait({waiting, replaced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        replaced.cancel()
        if not waiting.done():
            waiting.cancel()
    if waiting.done() and not waiting.cancelled():
        waiting.result()  # re-raise what the limiter raised, if anything
        return True
    return False


class Governor:
    """The budget of one provider+model within a process."""

    def __init__(
        self,
        provider: str,
        model: str,
        configured: Limits | None = None,
        shared: SharedBudget | None = None,
    ) -> None:
        self.provider, self.model, self.shared = provider, model, shared
        self.configured = configured or Limits()
        self.rpm, self.tpm = self.configured.rpm, self.configured.tpm
        self._requests = Bucket(self.rpm) if self.rpm else None
        self._tokens = Bucket(self.tpm) if self.tpm else None
        self._ceiling = self.configured.concurrency or MAX_IN_FLIGHT
        self.limit = float(min(SLOW_START, self._ceiling))
        self._slow_start = True
        self.in_flight = 0
        self._slot = asyncio.Condition()
        self._hold_until = 0.0
        self._last_cut = 0.0
        self._out_tokens = 0.0
        self._token_ratio = 1.0

    def reconfigure(self, limits: Limits) -> None:
        """Adopt configured limits (from a step's ``limits:``, say) in place."""
        self.configured = limits
        if limits.rpm:
            self._requests = self._adopt(self._requests, self.rpm, limits.rpm)
            self.rpm = limits.rpm
        if limits.tpm:
            self._tokens = self._adopt(self._tokens, self.tpm, limits.tpm)
            self.tpm = limits.tpm
        if limits.concurrency:
            self.limit = self._ceiling = limits.concurrency

    # -- admission -------------------------------------------------------------------------
    def estimate(self, prompt_chars: int, max_tokens: int) -> float:
        """Tokens a request will spend: its prompt (as learned) and the usual answer length."""
        answer = self._out_tokens or min(max_tokens, 256)
        return prompt_chars / 4 * self._token_ratio + answer

    async def acquire(self, tokens: float, max_wait_s: float) -> Ticket:
        """Wait for a slot, a request and ``tokens``; :class:`WaitTooLong` past ``max_wait_s``."""
        began = time.monotonic()
        try:
            async with asyncio.timeout(max(max_wait_s, 0.0)):
                await self._hold()
                await self._take_slot()
                try:
                    if self._requests is not None:
                        await self._requests.acquire(1)
                    if self._tokens is not None:
                        await self._tokens.acquire(min(tokens, self._tokens.max_rate))
                    await self._take_shared(tokens)
                    await self._hold()
                except BaseException:
                    await self._give_slot()
                    raise
        except TimeoutError:
            raise WaitTooLong() from None
        now = time.monotonic()
        return Ticket(now, now - began, tokens)

    async def _take_shared(self, tokens: float) -> None:
        """Spend the call's share of the budget every process on the store draws from."""
        if self.shared is None:
            return
        key = f"{self.provider}:{self.model}"
        if self.rpm:
            await self.shared.take(f"{key}:requests", 1, self.rpm)
        if self.tpm and self._tokens is not None:
            await self.shared.take(f"{key}:tokens", min(tokens, self._tokens.max_rate), self.tpm)

    async def _hold(self) -> None:
        while (pause := self._hold_until - time.monotonic()) > 0:
            await asyncio.sleep(pause)

    async def _take_slot(self) -> None:
        async with self._slot:
            await self._slot.wait_for(lambda: self.in_flight < max(1, int(self.limit)))
            self.in_flight += 1

    async def _give_slot(self) -> None:
        async with self._slot:
            self.in_flight -= 1
            self._slot.notify_all()

    # -- feedback --------------------------------------------------------------------------
    async def succeeded(
        self, ticket: Ticket, rate: object, tokens_in: int, tokens_out: int, chars: int
    ) -> None:
        """An answer: learn its headers and token use, grow the in-flight limit by 1/limit."""
        self.learn(rate, time.monotonic() - ticket.started)
        if chars:
            self._token_ratio += 0.2 * (tokens_in / max(chars / 4, 1.0) - self._token_ratio)
        self._out_tokens += (
            0.2 * (tokens_out - self._out_tokens) if self._out_tokens else tokens_out
        )
        grow = 1.0 if self._slow_start else 1 / max(self.limit, 1.0)
        self.limit = min(self._ceiling, self.limit + grow)
        await self._give_slot()

    async def throttled(self, ticket: Ticket, rate: object, retry_after: float | None) -> None:
        """A 429: hold every call for the retry delay; halve the limit once per round of calls."""
        self.learn(rate)
        now = time.monotonic()
        if retry_after:
            self._hold_until = max(self._hold_until, now + min(retry_after, 60.0))
        self._slow_start = False
        if ticket.started >= self._last_cut:
            self.limit = max(1.0, min(self.limit, float(self.in_flight)) / 2)
            self._last_cut = now
        await self._give_slot()

    async def failed(self, ticket: Ticket) -> None:
        """Any other outcome: only the slot is returned."""
        await self._give_slot()

    def learn(self, rate: object, age_s: float = 0.0) -> None:
        """Adopt the limits a provider reported (configured limits win)."""
        if not isinstance(rate, RateInfo):
            return
        if rate.requests_limit and not self.configured.rpm:
            self._requests = self._adopt(self._requests, self.rpm, rate.requests_limit)
            self.rpm = rate.requests_limit
        if rate.tokens_limit and not self.configured.tpm:
            self._tokens = self._adopt(self._tokens, self.tpm, rate.tokens_limit)
            self.tpm = rate.tokens_limit
        if self._requests is not None:
            self._requests.spend_to(rate.requests_remaining, age_s)
        if self._tokens is not None:
            self._tokens.spend_to(rate.tokens_remaining, age_s)

    @staticmethod
    def _adopt(bucket: Bucket | None, old: float | None, new: float) -> Bucket:
        if bucket is None:
            return Bucket(new)
        if old != new:
            bucket.retune(new)
        return bucket

    def current(self) -> Limits:
        """The limits in force now (configured or learned) and the in-flight limit."""
        return Limits(self.rpm, self.tpm, max(1, int(self.limit)))


class Governors:
    """Every governor of a run, made on first use from the configured limits."""

    def __init__(
        self,
        limits: dict[str, Limits] | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBudget | None = None,
    ) -> None:
        self.limits = dict(limits or {})
        self.shared = shared
        self._governors: dict[tuple[str, str], Governor] = {}
        self._reported: dict[tuple[str, str], float] = {}
        self._clock = clock

    def configure(self, limits: dict[str, Limits]) -> None:
        """Set limits (keys ``provider`` or ``provider:model``), for existing governors too."""
        self.limits.update(limits)
        for (provider, model), gov in self._governors.items():
            configured = limits.get(f"{provider}:{model}") or limits.get(provider)
            if configured is not None:
                gov.reconfigure(configured)

    def get(self, provider: str, model: str) -> Governor:
        """The governor of ``provider`` + ``model``."""
        key = (provider, model)
        if key not in self._governors:
            configured = self.limits.get(f"{provider}:{model}") or self.limits.get(provider)
            self._governors[key] = Governor(provider, model, configured, self.shared)
        return self._governors[key]

    def should_report(self, provider: str, model: str, every_s: float = 2.0) -> bool:
        """True at most once per ``every_s`` per provider+model (so events do not flood)."""
        now = self._clock()
        key = (provider, model)
        if now - self._reported.get(key, -every_s) < every_s:
            return False
        self._reported[key] = now
        return True
