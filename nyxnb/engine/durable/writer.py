"""Group commit for fan-out items: one writer per run, on the event loop's own thread.

A completed item hands its rows to the writer and awaits the commit: nothing is reported before
it is durable.  Items that complete in the same turn of the event loop (the usual case: calls
launched together finish together) are written in one transaction, flushed once those
completions have been handled, on one connection the writer keeps for the run (no pool checkout
per flush).  Measured alternatives: a commit per item costs a transaction per item; a writer
thread fights the loop for the GIL and delays every timer wake-up by ~2 ms.

A server that went away (a PostgreSQL restart) is waited for without blocking the loop: the
batch is kept and flushed again later (``loop.call_later``) for up to ``RECONNECT_S``, so other
workflows on the same loop keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from nyxnb.engine.durable.items import write_items
from nyxnb.engine.durable.rows import ItemRows
from nyxnb.store.database import RECONNECT_S, Database

Write = Callable[[Connection, Sequence[ItemRows]], None]
_Batch = list[tuple[ItemRows, asyncio.Future[None]]]


#: An item commit nobody waits on to start a call may wait this long for others to join it.
COALESCE_S = 0.01
#: A batch this large is flushed at the end of the loop turn, whatever the window.
MAX_BATCH = 512


class GroupWriter:
    """Batches the writes of a run into few transactions on one connection; one per run.

    An ``urgent`` write (a 'sent' row a call waits for) is flushed at the end of the current
    loop turn; other writes (items whose calls already ended) wait up to :data:`COALESCE_S` for
    more to join them, so a fast fan-out commits in a few large transactions, not one per turn.
    """

    def __init__(self, store: Database, write: Write = write_items) -> None:
        self._store, self._write = store, write  # write: fenced by item claims in a worker
        self._batch: _Batch = []
        self._conn: Connection | None = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._retry_until: float | None = None  # set while the server is away
        self.flushes = 0  # transactions committed (the bench and tests read it)

    async def write(self, rows: ItemRows, *, urgent: bool = False) -> None:
        """Commit rows (with others of this loop turn, or of the window); returns once durable."""
        await self.submit(rows, urgent=urgent)

    def submit(self, rows: ItemRows, *, urgent: bool = False) -> asyncio.Future[None]:
        """Queue rows for the next group commit; the future is done once they are durable.

        (A fan-out item's commit is a callback on this future, not a task of its own.)
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._batch.append((rows, done))
        if urgent or len(self._batch) >= MAX_BATCH:
            self._flush_soon()
        elif self._timer is None and not self._scheduled:
            self._timer = loop.call_later(COALESCE_S, self._flush)
        return done

    def hurry(self) -> None:
        """Commit what waits at the end of this loop turn: nothing more is coming to join it
        (the fan-out's last calls have ended), so the window would only be waited out."""
        if self._batch:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush at the end of this loop turn (once, however many ask)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        """Flush anything still waiting (no more retries) and give the connection back."""
        self._retry_until = 0.0
        if self._batch:
            self._flush()
        self._drop_connection()

    def _flush(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            self._commit([rows for rows, _ in batch])
        except Exception as exc:  # noqa: BLE001 - retried, isolated or handed to the waiters
            self._drop_connection()
            if self._store.transient(exc) and self._retry_later(batch):
                return
            self._isolate(batch, exc)
            return
        self._retry_until = None
        for _, done in batch:
            _settle(done, None)

    def _commit(self, rows: list[ItemRows]) -> None:
        if self._conn is None:
            self._conn = self._store.connect()
        with self._conn.begin():
            self._store.fence(self._conn)
            self._write(self._conn, rows)
        self.flushes += 1

    def _retry_later(self, batch: _Batch) -> bool:
        """Keep the batch and flush it again soon; False once the server stayed away too long."""
        now = time.monotonic()
        if self._retry_until is None:
            self._retry_until = now + RECONNECT_S
        if now >= self._retry_until:
            return False
        self._batch = batch + self._batch
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(0.1, self._flush)
        return True

    def _isolate(self, batch: _Batch, exc: Exception) -> None:
        """A failed batch: each item is tried alone, so one bad item fails only itself."""
        if len(batch) == 1:
            _settle(batch[0][1], exc)
            return
        for rows, done in batch:
            try:
                self._commit([rows])
            except Exception as one:  # noqa: BLE001 - this item's own error
                self._drop_connection()
                _settle(done, one)
            else:
                _settle(done, None)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(None)
