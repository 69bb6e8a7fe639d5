"""Rate governors: each provider+model's request and token budget, its 429 gate and in-flight limit.

A call first waits for its governor (:meth:`Governor.acquire`): an in-flight slot, one request of
the per-minute request budget and its estimated tokens of the token budget.  Waiting is not an
attempt, but it counts toward the run's ``max_wait_s``.  The budgets come from the spec or CLI
(``defaults.limits``) or are learned from the provider's answers: OpenAI ``x-ratelimit-*`` and
Anthropic ``anthropic-ratelimit-*`` headers, and Gemini's per-minute ``QuotaFailure`` in its 429s.
An answer saying a budget's ``remaining`` is 0 holds new calls until its reset.

One 429 policy (:meth:`Governor.throttled`): the provider's hint (``retry-after``, a reset, a
``RetryInfo``, "try again in 7m12s") holds every call to the provider+model that long; without a
usable hint (none, or 0) the hold backs off on its own, about 1 s doubling to 60 s with jitter,
and the governor paces requests at half the rate that was getting through, growing back ~5% a
second (a provider that says nothing is not hammered).  While a provider+model is limited its
waiting calls wait at one gate: when a hold ends, one call goes (a probe), and the others follow
only once it was answered.  Each 429 also halves the in-flight limit; each success grows it back
by about one per round of calls (additive increase, multiplicative decrease).

The buckets are :class:`~nyxnb.engine.calls.bucket.Bucket` (aiolimiter).  pyrate-limiter's
strengths (sync and async, Redis/SQL backends) are not needed here: processes sharing a store
share budgets through :mod:`nyxnb.engine.calls.budget` (leases of a store row, cheaper than a
backend round trip per call).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nyxnb.engine.calls.bucket import Bucket
from nyxnb.engine.calls.budget import SharedBudget
from nyxnb.rates import RateInfo

#: The in-flight limit starts at SLOW_START and doubles each round of answers until the first 429
#: (TCP's slow start: a provider that says nothing about its limits is not hit by the whole
#: fan-out at once); a 429 halves it, and it grows back by one per round of answers.
SLOW_START = 4
MAX_IN_FLIGHT = 256
#: Backoff of hint-less 429s: FIRST_BACKOFF_S doubling to MAX_BACKOFF_S, times 1..1+JITTER.
FIRST_BACKOFF_S, MAX_BACKOFF_S, JITTER = 1.0, 60.0, 0.25
#: Pace of a provider that 429s without saying its limits: never below MIN_PACE_RPS; it grows
#: by PACE_GROWTH a second (5%: back to the limit ~14 s after a halving).
MIN_PACE_RPS, PACE_GROWTH = 0.2, 0.05


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
    """Waiting for the governor would pass the run's ``max_wait_s``.

    ``hold_s`` is how long the provider asked to wait, when that alone is past the budget.
    """

    def __init__(self, hold_s: float = 0.0) -> None:
        super().__init__(hold_s)
        self.hold_s = hold_s


@dataclass
class Ticket:
    """One admitted call: when it started and how long it waited."""

    started: float
    waited_s: float
    tokens: float
    probe: bool = False  # the one call let through while the provider+model is limited


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
        self._slot_waiters = 0  # calls awaiting a slot: none may be overtaken by _free()
        self._hold_until = 0.0
        self._last_cut = 0.0
        self._out_tokens = 0.0
        self._token_ratio = 1.0
        self._gate = _Gate()
        self._pace: Bucket | None = None  # pacing learned from hint-less 429s
        self._pace_rps = 0.0
        self._answers: deque[float] = deque(maxlen=512)  # when recent answers arrived

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

    def held_for(self) -> float:
        """Seconds every call to this provider+model is held for now (0: not held)."""
        return max(self._hold_until - time.monotonic(), 0.0)

    async def acquire(self, tokens: float, max_wait_s: float) -> Ticket:
        """Wait for a slot, a request and ``tokens``; :class:`WaitTooLong` past ``max_wait_s``."""
        began = time.monotonic()
        if self._free(began):  # nothing to wait for: no timer, no lock, no await
            self.in_flight += 1
            return Ticket(began, 0.0, tokens, False)
        deadline = began + max(max_wait_s, 0.0)
        try:
            async with asyncio.timeout(max(max_wait_s, 0.0)):
                await self._wait_hold(deadline)
                await self._take_slot()
                try:
                    await self._take_budget(tokens)
                    probe = await self._pass_gate(deadline)
                except BaseException:
                    await self._give_slot()
                    raise
        except TimeoutError:
            raise WaitTooLong() from None
        now = time.monotonic()
        return Ticket(now, now - began, tokens, probe)

    def _free(self, now: float) -> bool:
        """True when a call may start at once: no hold, no budget to draw, a slot nobody awaits."""
        return (
            self._hold_until <= now
            and self._requests is None
            and self._pace is None
            and self._tokens is None
            and (self.shared is None or not (self.rpm or self.tpm))
            and not self._gate.limited
            and self._slot_waiters == 0
            and self._has_slot()
        )

    def _has_slot(self) -> bool:
        return self.in_flight < max(1, int(self.limit))

    async def _take_budget(self, tokens: float) -> None:
        if self._requests is not None:
            await self._requests.acquire(1)
        elif self._pace is not None:
            await self._pace.acquire(1)
        if self._tokens is not None:
            await self._tokens.acquire(min(tokens, self._tokens.max_rate))
        await self._take_shared(tokens)

    async def _take_shared(self, tokens: float) -> None:
        """Spend the call's share of the budget every process on the store draws from."""
        if self.shared is None:
            return
        key = f"{self.provider}:{self.model}"
        if self.rpm:
            await self.shared.take(f"{key}:requests", 1, self.rpm)
        if self.tpm and self._tokens is not None:
            await self.shared.take(f"{key}:tokens", min(tokens, self._tokens.max_rate), self.tpm)

    async def _wait_hold(self, deadline: float) -> None:
        """Sleep out the hold; a hold ending past ``deadline`` gives up at once."""
        while (pause := self._hold_until - time.monotonic()) > 0:
            if time.monotonic() + pause > deadline:
                raise WaitTooLong(pause)
            await asyncio.sleep(pause)

    async def _pass_gate(self, deadline: float) -> bool:
        """Wait out the hold and, while limited, for the probe; True if this call is the probe."""
        while True:
            await self._wait_hold(deadline)
            if not self._gate.limited:
                return False
            if not self._gate.probing:
                self._gate.probing = True
                return True
            await self._gate.wait()

    async def _take_slot(self) -> None:
        self._slot_waiters += 1
        try:
            async with self._slot:
                await self._slot.wait_for(self._has_slot)
                self.in_flight += 1
        finally:
            self._slot_waiters -= 1

    async def _give_slot(self) -> None:
        if self._slot_waiters == 0:  # nobody to wake: no lock to take (one loop, no race)
            self.in_flight -= 1
            return
        async with self._slot:
            self.in_flight -= 1
            self._slot.notify_all()

    # -- feedback --------------------------------------------------------------------------
    async def succeeded(
        self, ticket: Ticket, rate: RateInfo | None, tokens_in: int, tokens_out: int, chars: int
    ) -> None:
        """An answer: learn its headers and token use, grow the in-flight limit by 1/limit."""
        now = time.monotonic()
        self.learn(rate, now - ticket.started)
        self._answers.append(now)
        if chars:
            self._token_ratio += 0.2 * (tokens_in / max(chars / 4, 1.0) - self._token_ratio)
        self._out_tokens += (
            0.2 * (tokens_out - self._out_tokens) if self._out_tokens else tokens_out
        )
        grow = 1.0 if self._slow_start else 1 / max(self.limit, 1.0)
        self.limit = min(self._ceiling, self.limit + grow)
        if ticket.probe or ticket.started >= self._gate.since:
            self._gate.clear()
        self._grow_pace()
        await self._give_slot()

    async def throttled(
        self, ticket: Ticket, rate: RateInfo | None, retry_after: float | None
    ) -> None:
        """A 429: hold every call for the hint (or a backoff), then let one probe go first."""
        self.learn(rate)
        now = time.monotonic()
        first_of_round = ticket.started >= self._last_cut
        if retry_after is not None and retry_after > 0:
            hold = retry_after
            self._gate.bare = 0
        else:
            hold = self._gate.backoff_s() if first_of_round or ticket.probe else 0.0
            if first_of_round:
                self._slow_pace(now)
        self._hold_until = max(self._hold_until, now + hold)
        self._gate.limit(now, was_probe=ticket.probe)
        self._slow_start = False
        if first_of_round:
            self.limit = max(1.0, min(self.limit, float(self.in_flight)) / 2)
            self._last_cut = now
        await self._give_slot()

    async def failed(self, ticket: Ticket) -> None:
        """Any other outcome: the slot is returned (and the probe's turn passes on)."""
        if ticket.probe:
            self._gate.passed()
        await self._give_slot()

    def learn(self, rate: RateInfo | None, age_s: float = 0.0) -> None:
        """Adopt the limits a provider reported (configured limits win); hold on a spent budget."""
        if rate is None:
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
        spent_for = rate.exhausted_for_s()
        if spent_for > 0:
            self._hold_until = max(self._hold_until, time.monotonic() + spent_for)

    def _slow_pace(self, now: float) -> None:
        """Pace at half the rate that got through, when the provider names no request limit."""
        if self._requests is not None:
            return
        if self._pace is None:
            recent = [t for t in self._answers if now - t <= 10.0]
            if not recent:
                return  # nothing got through yet: no rate to pace at (the backoff holds)
            rps = len(recent) / min(10.0, max(1.0, now - recent[0])) / 2
        else:
            rps = self._pace_rps / 2
        self._set_pace(max(MIN_PACE_RPS, rps))

    def _grow_pace(self) -> None:
        """Grow the pace by PACE_GROWTH a second, whatever the rate (per answer: growth / rate)."""
        if self._pace is not None:
            self._set_pace(self._pace_rps * (1 + min(PACE_GROWTH / self._pace_rps, 1.0)))

    def _set_pace(self, rps: float) -> None:
        old = self._pace_rps
        self._pace_rps = rps
        if self._pace is None:
            self._pace = Bucket(rps * 60)
        elif abs(rps - self._pace.per_min / 60) >= 0.1 * old:
            self._pace.retune(rps * 60)

    @staticmethod
    def _adopt(bucket: Bucket | None, old: float | None, new: float) -> Bucket:
        if bucket is None:
            return Bucket(new)
        if old != new:
            bucket.retune(new)
        return bucket

    def current(self) -> Limits:
        """The limits in force now (configured or learned) and the in-flight limit."""
        rpm = self.rpm or (round(self._pace_rps * 60, 1) if self._pace else None)
        return Limits(rpm, self.tpm, max(1, int(self.limit)))


class _Gate:
    """The 429 state of one provider+model: limited since when, and whether a probe is out."""

    def __init__(self) -> None:
        self.limited = False
        self.probing = False
        self.since = float("inf")  # answers to calls sent after this clear the limit
        self.bare = 0  # hint-less 429s in a row: the backoff's exponent
        self._changed = asyncio.Event()

    def backoff_s(self) -> float:
        """About 1 s doubling to 60 s, with jitter, per hint-less 429 in a row."""
        base = min(FIRST_BACKOFF_S * 2**self.bare, MAX_BACKOFF_S)
        self.bare += 1
        return base * (1 + JITTER * random.random())

    def limit(self, now: float, was_probe: bool) -> None:
        if not self.limited:
            self.limited, self.since = True, now
        if was_probe:
            self.passed()

    def clear(self) -> None:
        if self.limited or self.probing:
            self.limited, self.probing, self.bare = False, False, 0
            self.since = float("inf")
            self._wake()

    def passed(self) -> None:
        self.probing = False
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self) -> None:
        await self._changed.wait()


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


def too_long_message(max_wait_s: float, hold_s: float) -> str:
    """Why a rate-limited item falls back, and when the provider said its limit resets."""
    if hold_s <= 0:
        return f"still rate limited after waiting {max_wait_s:g} s (max_wait_s)"
    at = datetime.now(UTC) + timedelta(seconds=hold_s)
    return (
        f"rate limited: the limit resets in {_human_duration(hold_s)} "
        f"(at {at:%Y-%m-%d %H:%M:%S} UTC), "
        f"past max_wait_s ({max_wait_s:g} s)"
    )


def _human_duration(seconds: float) -> str:
    """``7m12s``, ``3h5m``, ``8.6s``."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if hours else f"{minutes}m{secs}s"
