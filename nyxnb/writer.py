"""Group commit for fan-out items, on a dedicated writer thread.

Each completed item is handed to the writer and its task awaits the commit: nothing is reported
before it is durable.  Items that complete while a commit is in flight are written together in
the next transaction, so the event loop keeps launching calls while the database works, and the
cost per item stays flat however many items there are.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from .records import ItemRows, write_items
from .store import Store

Write = ItemRows
_STOP = object()
MAX_BATCH = 256


class GroupWriter:
    """A writer thread that commits queued writes in batches; one per run."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def write(self, rows: ItemRows) -> None:
        """Commit one item's rows (batched with others waiting); returns once it is durable."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nyxnb-writer", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((rows, done, loop))
        await done

    def close(self) -> None:
        """Finish pending writes and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Write, asyncio.Future[None], Any]]) -> None:
        try:
            with self.store.engine.begin() as conn:
                write_items(conn, [rows for rows, _, _ in batch])
        except Exception as exc:  # noqa: BLE001 - isolate the failing write, commit the others
            if len(batch) > 1:
                for one in batch:
                    self._commit([one])
                return
            _settle(batch[0], exc)
            return
        for entry in batch:
            _settle(entry, None)


def _settle(entry: tuple[Write, asyncio.Future[None], Any], exc: BaseException | None) -> None:
    _, done, loop = entry

    def settle() -> None:
        if done.done():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(None)

    loop.call_soon_threadsafe(settle)
