"""Item claims: several workers share one fan-out, each item executed by one owner at a time.

A claim is three columns of ``step_items``: ``claimed_by`` (the worker's lease token),
``claim_expires_at`` and ``claim_generation`` (a fencing token, +1 on every claim).  A worker
claims a small batch of pending items whose claim is free or expired in one short transaction --
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (concurrent claimers skip each other's rows
instead of queueing behind them), ``BEGIN IMMEDIATE`` on SQLite (one writer at a time; the
``FOR UPDATE`` clause is not rendered there).  The holder renews its claims with its heartbeat;
a killed holder's claims expire after the claim TTL (:func:`claim_ttl_s`: ``NYXNB_CLAIM_TTL_S``
or ``nyxnb worker --claim-ttl``, 6 s by default) and another worker takes the items.

A worker claims the next batch *before* its current one runs dry: when its last claimed item
starts, the refill is scheduled for the next loop turn, after the calls just started are on
their way, so a free slot finds an item waiting instead of a claim round-trip.  A refill that
comes back short means the step is nearly done: from then on it claims only on demand, so no
worker sits on unstarted items while another has idle slots.

The commit of an item is fenced: it only updates the row while the claim is still this
worker's, with the same generation, and not expired -- otherwise :class:`ClaimLost` and the whole
write (item, ledger rows, cache) is rolled back.  A committed item is never claimed again.  Nor
is an item called once its claim is lost: a worker that stood still past the TTL (SIGSTOP, a
suspended laptop) asks the store before it starts any claimed item, and every renewal drops the
claims it no longer holds (:meth:`ItemClaimer.still_holds`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, and_, bindparam, func, or_, select, update

from nyxnb.engine.durable.items import write_items
from nyxnb.engine.durable.records import ITEMS
from nyxnb.engine.durable.rows import ItemRow, ItemRows, ItemUpdate
from nyxnb.errors import ClaimLost, ConfigError
from nyxnb.store.database import Database
from nyxnb.store.models import FAILED, PENDING, RUNNING, utcnow

CLAIM_TTL_S = 6.0
MIN_CLAIM_TTL_S = 1.0
#: A longer TTL only delays the takeover of a dead worker's items (and ``inf`` cannot be a date).
MAX_CLAIM_TTL_S = 3600.0
TTL_ENV = "NYXNB_CLAIM_TTL_S"
POLL_S = 0.05  # how often a fan-out's lead looks for items left by others (or expired)


def claim_ttl_s(value: float | None = None) -> float:
    """The claim TTL: ``value``, else ``NYXNB_CLAIM_TTL_S``, else 6 s (1 s to 1 h)."""
    if value is None:
        text = os.environ.get(TTL_ENV, "").strip()
        try:
            value = float(text) if text else CLAIM_TTL_S
        except ValueError:
            raise ConfigError(
                f"{TTL_ENV}={text!r} is not a number", hint="set it to seconds, e.g. 6"
            ) from None
    if not MIN_CLAIM_TTL_S <= value <= MAX_CLAIM_TTL_S:  # also refuses nan
        problem = "too short" if value < MIN_CLAIM_TTL_S else "out of range"
        raise ConfigError(
            f"claim TTL {value:g} s is {problem}",
            hint=f"use {MIN_CLAIM_TTL_S:g} to {MAX_CLAIM_TTL_S:g} s ({TTL_ENV} or --claim-ttl)",
        )
    return float(value)


def heartbeat_s(ttl_s: float) -> float:
    """How often a holder renews claims of ``ttl_s``: a quarter of it, at most 1.5 s."""
    return min(1.5, ttl_s / 4)


_OPEN = ITEMS.c.status.in_((PENDING, RUNNING))


@dataclass(frozen=True, order=True)
class Claim:
    """One claimed item: its index and the fencing generation of the claim."""

    idx: int
    generation: int


def _claimable(step_id: str, now: datetime) -> ColumnElement[bool]:
    return and_(
        ITEMS.c.step_id == step_id,
        _OPEN,
        or_(ITEMS.c.claimed_by.is_(None), ITEMS.c.claim_expires_at < now),
    )


def claim_items(
    store: Database, step_id: str, owner: str, limit: int, ttl_s: float = CLAIM_TTL_S
) -> list[Claim]:
    """Claim up to ``limit`` open items of a step whose claim is free or expired."""
    if limit <= 0:
        return []
    now = utcnow()
    pick = (
        select(ITEMS.c.id)
        .where(_claimable(step_id, now))
        .order_by(ITEMS.c.idx)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claim = (  # one statement: the picked rows are locked, so +1 is the generation we return
        update(ITEMS)
        .where(ITEMS.c.id.in_(pick))
        .values(
            claimed_by=owner,
            claim_expires_at=now + timedelta(seconds=ttl_s),
            claim_generation=func.coalesce(ITEMS.c.claim_generation, 0) + 1,
            status=RUNNING,
        )
        .returning(ITEMS.c.idx, ITEMS.c.claim_generation)
    )
    with store.begin() as conn:
        rows = conn.execute(claim).all()
    return sorted(Claim(r.idx, r.claim_generation) for r in rows)


def renew_claims(
    store: Database, owner: str, ttl_s: float = CLAIM_TTL_S
) -> set[tuple[str, int, int]]:
    """Extend every open, unexpired claim ``owner`` holds; returns them (step, idx, generation)."""
    now = utcnow()
    with store.begin() as conn:
        rows = conn.execute(
            update(ITEMS)
            .where(
                ITEMS.c.claimed_by == owner,
                ITEMS.c.status == RUNNING,
                ITEMS.c.claim_expires_at >= now,
            )
            .values(claim_expires_at=now + timedelta(seconds=ttl_s))
            .returning(ITEMS.c.step_id, ITEMS.c.idx, ITEMS.c.claim_generation)
        ).all()
    return {(str(r[0]), int(r[1]), int(r[2])) for r in rows}


def release_claims(store: Database, owner: str, step_id: str, idxs: Sequence[int]) -> None:
    """Hand unstarted items back (drain): pending again, free for any worker at once."""
    if not idxs:
        return
    with store.begin() as conn:
        conn.execute(
            update(ITEMS)
            .where(
                ITEMS.c.step_id == step_id,
                ITEMS.c.idx.in_(list(idxs)),
                ITEMS.c.claimed_by == owner,
                ITEMS.c.status == RUNNING,
            )
            .values(status=PENDING, claimed_by=None, claim_expires_at=None)
        )


@dataclass(frozen=True)
class StepProgress:
    """Where a shared fan-out stands: open items, of which claimable now, and failed ones."""

    open: int
    claimable: int
    failed: int


def step_progress(store: Database, step_id: str) -> StepProgress:
    """Count a step's open, claimable and failed items (one read)."""
    now = utcnow()
    free = or_(ITEMS.c.claimed_by.is_(None), ITEMS.c.claim_expires_at < now)
    query = select(
        func.count().filter(_OPEN),
        func.count().filter(and_(_OPEN, free)),
        func.count().filter(ITEMS.c.status == FAILED),
    ).where(ITEMS.c.step_id == step_id)
    with store.reading() as conn:
        row = conn.execute(query).one()
    return StepProgress(int(row[0]), int(row[1]), int(row[2]))


_FENCED_COMPLETE = (
    update(ITEMS)
    .where(
        ITEMS.c.step_id == bindparam("b_step"),
        ITEMS.c.idx == bindparam("b_idx"),
        ITEMS.c.claimed_by == bindparam("b_owner"),
        ITEMS.c.claim_generation == bindparam("b_gen"),
        ITEMS.c.claim_expires_at >= bindparam("b_now"),
        ITEMS.c.status == RUNNING,
    )
    .values(
        status=bindparam("status"),
        output=bindparam("output"),
        error=bindparam("error"),
        provider=bindparam("provider"),
        updated_at=bindparam("updated_at"),
        claim_expires_at=None,  # claimed_by stays: who committed the item (`nyxnb show`)
    )
)


class ItemClaimer:
    """One worker's claims: its token, and the generation of every item it holds."""

    def __init__(self, store: Database, owner: str, *, ttl_s: float = CLAIM_TTL_S) -> None:
        self.store, self.owner, self.ttl_s = store, owner, ttl_s
        self.held: dict[tuple[str, int], int] = {}
        # until when (this process's monotonic clock) a held claim is surely still ours: taken
        # before the claim or renewal was written, so never later than the stored expiry
        self._until: dict[tuple[str, int], float] = {}
        self.clock = time.monotonic  # tests advance it to stand for a stopped process
        self.refused = 0  # commits refused because the claim was lost
        self.lost = 0  # claims found lost (expired, or taken by another worker) and dropped

    def claim(self, step_id: str, limit: int) -> list[Claim]:
        """Claim up to ``limit`` items of a step and remember their generations."""
        until = self.clock() + self.ttl_s
        got = claim_items(self.store, step_id, self.owner, limit, self.ttl_s)
        for c in got:
            self.held[(step_id, c.idx)] = c.generation
            self._until[(step_id, c.idx)] = until
        return got

    def still_holds(self, step_id: str, idx: int) -> bool:
        """Whether this worker still holds the item's claim, so it may start its call.

        Past the claim's TTL on this process's clock (a process stopped or starved that long),
        the store is asked again (one renewal of every claim): an expired or taken-over claim
        is dropped, never called -- another worker may have committed the item meanwhile.
        """
        key = (step_id, idx)
        if key in self.held and self.clock() >= self._until.get(key, 0.0):
            self.renew()
        return key in self.held

    def release(self, step_id: str, idxs: Sequence[int]) -> None:
        """Give unstarted items back."""
        release_claims(self.store, self.owner, step_id, idxs)
        for idx in idxs:
            self._drop((step_id, idx))

    def renew(self) -> int:
        """Extend this worker's claims (its heartbeat); drop the ones it lost; how many it holds."""
        until = self.clock() + self.ttl_s
        kept = renew_claims(self.store, self.owner, self.ttl_s)
        for key, generation in list(self.held.items()):
            if (*key, generation) in kept:
                self._until[key] = until
            else:  # expired while this process stood still, or another worker took it over
                self._drop(key)
                self.lost += 1
        return len(kept)

    def _drop(self, key: tuple[str, int]) -> None:
        self.held.pop(key, None)
        self._until.pop(key, None)

    def write_batch(self, conn: Connection, batch: Sequence[ItemRows]) -> None:
        """Commit items only where this worker's claim still stands (else :class:`ClaimLost`).

        One locking read checks every claim of the batch, then one executemany commits them
        (still fenced in its WHERE): two statements per group commit, not one per item.
        """
        items = [rows.item for rows in batch if rows.item is not None]  # None: a 'sent' row
        if items:
            now = utcnow()
            self._check(conn, items, now)
            conn.execute(
                _FENCED_COMPLETE,
                [
                    {
                        **i.params(),
                        "b_owner": self.owner,
                        "b_gen": self.held[(i.step_id, i.idx)],
                        "b_now": now,
                    }
                    for i in items
                ],
            )
            for i in items:
                self._drop((i.step_id, i.idx))
        write_items(conn, [replace(b, item=None) for b in batch])  # ledger, cache, settle

    def _check(self, conn: Connection, items: Sequence[ItemUpdate], now: datetime) -> None:
        """Lock the batch's rows and raise :class:`ClaimLost` for the first claim not ours."""
        by_step: dict[str, list[int]] = {}
        for i in items:
            by_step.setdefault(i.step_id, []).append(i.idx)
        live: set[tuple[str, int]] = set()
        for step_id, idxs in by_step.items():
            query = (
                select(ITEMS.c.idx, ITEMS.c.claim_generation)
                .where(
                    ITEMS.c.step_id == step_id,
                    ITEMS.c.idx.in_(idxs),
                    ITEMS.c.claimed_by == self.owner,
                    ITEMS.c.claim_expires_at >= now,
                    ITEMS.c.status == RUNNING,
                )
                .with_for_update()
            )
            for idx, gen in conn.execute(query):
                if self.held.get((step_id, idx)) == gen:
                    live.add((step_id, idx))
        for step_id, idxs in by_step.items():
            for idx in idxs:
                if (step_id, idx) not in live:
                    self.refused += 1
                    raise ClaimLost(step_id, idx, self.owner)

    def source(self, step_id: str, rows: Sequence[ItemRow], batch: int, *, lead: bool) -> Source:
        """Where a fan-out takes its next item from (see :class:`Source`)."""
        return Source(self, step_id, {r.idx: r for r in rows}, batch, lead=lead)


class Source:
    """Next item of a shared fan-out: from this worker's claimed batch, claiming more as needed.

    The lead (the worker running the workflow) waits while other workers hold open items, and
    takes over any whose claim expires; it returns None once every item is committed or failed.
    A helper returns None as soon as nothing is claimable.  See the module docstring for the
    refill ahead of need.
    """

    def __init__(
        self,
        claimer: ItemClaimer,
        step_id: str,
        rows: dict[int, ItemRow],
        batch: int,
        *,
        lead: bool,
    ) -> None:
        self.claimer, self.step_id, self.rows = claimer, step_id, rows
        self.batch, self.lead = max(1, batch), lead
        self._mine: deque[int] = deque()
        self._lock = asyncio.Lock()
        self._ahead = True  # refill before running dry, until a refill comes back short
        self._refill: asyncio.Handle | None = None
        self._closed = False
        self._given: set[int] = set()  # handed out here: never twice (see _take)

    async def next(self) -> ItemRow | None:
        """The next item to run here, or None when there is nothing left for this worker."""
        async with self._lock:
            while True:
                while not self._mine:
                    self._cancel_refill()
                    self._take(self.claimer.claim(self.step_id, self.batch))
                    if self._mine:
                        break
                    if not self.lead or not await self._wait_claimable():
                        return None
                idx = self._mine.popleft()
                if self.claimer.still_holds(self.step_id, idx):  # else: lost while we stood
                    self._given.add(idx)
                    break
            if not self._mine and self._ahead and self._refill is None:
                self._refill = asyncio.get_running_loop().call_soon(self._refill_now)
            return self.rows[idx]

    async def _wait_claimable(self) -> bool:
        """The lead waits (reading, not claiming) for an item others left or let expire;
        False once every item is committed.  At most one claim per ``POLL_S`` still."""
        progress = step_progress(self.claimer.store, self.step_id)
        while progress.open:
            await asyncio.sleep(POLL_S)
            progress = step_progress(self.claimer.store, self.step_id)
            if progress.claimable:
                return True
        return False

    def _take(self, got: Sequence[Claim]) -> None:
        # An item already handed out here is still in flight (its claim expired under load
        # and came back to us): the new claim serves that call's commit; a second call of it
        # would be paid twice.
        self._mine.extend(c.idx for c in got if c.idx in self.rows and c.idx not in self._given)
        foreign = [c.idx for c in got if c.idx not in self.rows]  # not runnable here: hand back
        if foreign:
            self.claimer.release(self.step_id, foreign)

    def _refill_now(self) -> None:
        """Claim the next batch (a loop turn after the last claimed item started)."""
        self._refill = None
        if self._closed or self._mine:
            return
        try:
            got = self.claimer.claim(self.step_id, self.batch)
        except Exception:  # noqa: BLE001 - a store hiccup: the next item claims on demand
            return
        if len(got) < self.batch:
            self._ahead = False  # nearly done: claim only what a free slot needs
        self._take(got)

    def _cancel_refill(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None

    def release_unstarted(self) -> None:
        """Give back what was claimed but not started (drain, pause, end of the fan-out)."""
        self._closed = True
        self._cancel_refill()
        idxs, self._mine = list(self._mine), deque()
        self.claimer.release(self.step_id, idxs)
