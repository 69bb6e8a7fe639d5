"""Group commit for fan-out items, on the event loop's own thread.

A completed item hands its rows to the writer and awaits the commit: nothing is reported before
it is durable.  Items that complete in the same turn of the event loop (the usual case: calls
launched together finish together) are written in one transaction, flushed once those
completions have been handled.  Measured alternatives: a commit per item costs a transaction per
item; a writer thread fights the loop for the GIL and delays every timer wake-up by ~2 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from nyxnb.engine.durable.records import ItemRows, write_items
from nyxnb.store.database import Store


class GroupWriter:
    """Batches item writes made in one loop turn into one transaction; one per run."""

    def __init__(
        self,
        store: Store,
        write: Callable[[Connection, Sequence[ItemRows]], None] = write_items,
    ) -> None:
        self.store, self._write = store, write  # write: fenced by item claims in a worker
        self._batch: list[tuple[ItemRows, asyncio.Future[None]]] = []

    async def write(self, rows: ItemRows) -> None:
        """Commit one item's rows (with others of this loop turn); returns once durable."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush)
        self._batch.append((rows, done))
        await done

    def close(self) -> None:
        """Flush anything still waiting."""
        if self._batch:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        try:
            with self.store.begin() as conn:
                self._write(conn, [rows for rows, _ in batch])
        except Exception as exc:  # noqa: BLE001 - isolate the failing write, commit the others
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for rows, done in batch:
                self._batch = [(rows, done)]
                self._flush()
            return
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(None)
