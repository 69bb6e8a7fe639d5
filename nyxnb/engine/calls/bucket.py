"""Leaky buckets of a per-minute budget: ``aiolimiter.AsyncLimiter`` through its public API.

aiolimiter was chosen over pyrate-limiter because it is asyncio-native and tiny (one class, no
dependencies): waiters are woken in order by a timer, with no polling loop.  A limiter's rate is
fixed when it is made, so :class:`Bucket` builds a new one when the rate changes, carrying the
level over.  A bucket holds one second of budget, so a per-minute limit is spent at its pace,
never in a burst at the start of the minute (providers enforce at that grain too).
"""

from __future__ import annotations

import asyncio
import time

from aiolimiter import AsyncLimiter


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
