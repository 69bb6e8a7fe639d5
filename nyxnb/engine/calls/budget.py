"""Rate budgets shared through the store, so processes on one store share a provider's limit.

Each provider+model+kind (``requests``, ``tokens``) has a row of ``rate_buckets``: a token bucket
refilled at the limit's pace and holding one second of it.  A process does not touch the row per
call: it leases a slice (a fifth of a second's budget, at least what one call needs) in one short
transaction and spends the slice locally, so the store sees a handful of small writes a second
per provider, whatever the fan-out.  When the bucket is short, the lease says how long to wait.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Table
from sqlalchemy.orm import Session

from nyxnb.store import Database
from nyxnb.store.database import insert_ignoring_duplicates
from nyxnb.store.models import RateBucket

#: Seconds of budget leased at a time.
SLICE_S = 0.2
BURST_S = 1.0
_BUCKETS: Table = RateBucket.__table__  # type: ignore[assignment]


class SharedBudget:
    """The leases of one process on a store's rate buckets."""

    def __init__(self, store: Database) -> None:
        self.store = store
        self._credit: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def take(self, key: str, amount: float, per_min: float) -> float:
        """Spend ``amount`` of ``key``'s budget, waiting for it; returns the seconds waited."""
        waited = 0.0
        async with self._locks.setdefault(key, asyncio.Lock()):
            while self._credit.get(key, 0.0) < amount:
                short = amount - self._credit.get(key, 0.0)
                want = max(short, per_min / 60 * SLICE_S)
                got, wait_s = self._lease(key, want, short, per_min)
                self._credit[key] = self._credit.get(key, 0.0) + got
                if self._credit[key] < amount:
                    await asyncio.sleep(wait_s)
                    waited += wait_s
            self._credit[key] -= amount
        return waited

    def _lease(self, key: str, want: float, need: float, per_min: float) -> tuple[float, float]:
        """(granted, seconds to wait before asking again) in one short transaction."""
        now = time.time()
        capacity = max(1.0, per_min / 60 * BURST_S)
        with self.store.session() as s:
            row = s.get(RateBucket, key, with_for_update=True)
            if row is None:  # first use on this store: create it, unless a process just did
                _create_once(s, key, per_min, capacity, now)
                row = s.get_one(RateBucket, key, with_for_update=True)
            rate = per_min / 60
            level = min(capacity, row.level + max(now - row.refilled_at, 0.0) * rate)
            need = min(need, capacity)
            granted = min(want, level) if level >= need else 0.0
            row.level, row.refilled_at, row.per_min = level - granted, now, per_min
        wait_s = 0.0 if granted else (need - level) / rate
        return granted, max(wait_s, 0.005)


def _create_once(s: Session, key: str, per_min: float, capacity: float, now: float) -> None:
    """Create ``key``'s bucket, full, unless a process already did (no race on first use)."""
    values = {"id": key, "per_min": per_min, "level": capacity, "refilled_at": now}
    s.execute(insert_ignoring_duplicates(s.connection(), _BUCKETS).values(**values))
