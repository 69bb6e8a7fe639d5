"""SQLite WAL checkpoints on a thread of their own, off the event loop.

SQLite checkpoints its write-ahead log inside whichever commit makes the log cross 1,000 pages:
an fsync of the log and of the database, 5-35 ms on the project's machines, that a run's group
commit (on the event loop) waited for every ~70 commits while every call in flight stood still.
A store opened by nyxnb raises that threshold to :data:`SAFETY_PAGES` (a safety net only) and
this thread checkpoints every watched store whose log holds more than :data:`THRESHOLD_BYTES`,
every :data:`INTERVAL_S`.  Its checkpoints are PASSIVE (they never wait for a writer nor make
one wait), and the ``sqlite3`` module releases the GIL while one runs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time

INTERVAL_S = 0.25
THRESHOLD_BYTES = 1 << 20  # ~256 pages
#: ``PRAGMA wal_autocheckpoint`` for nyxnb's connections: a checkpoint inside a commit only if
#: this thread fell behind by ~40 MB of log.
SAFETY_PAGES = 10_000

_lock = threading.Lock()
_watched: dict[str, int] = {}  # database file -> stores of this process watching it
_thread: threading.Thread | None = None


def watch(path: str) -> None:
    """Checkpoint the WAL of the SQLite database at ``path`` until :func:`unwatch`."""
    global _thread
    with _lock:
        _watched[path] = _watched.get(path, 0) + 1
        if _thread is None:
            _thread = threading.Thread(target=_run, name="nyxnb-checkpoint", daemon=True)
            _thread.start()


def unwatch(path: str) -> None:
    """One store of ``path`` closed; the last one stops its checkpoints."""
    with _lock:
        left = _watched.get(path, 0) - 1
        if left > 0:
            _watched[path] = left
        else:
            _watched.pop(path, None)


def _run() -> None:
    open_: dict[str, tuple[int, sqlite3.Connection]] = {}  # path -> (inode, connection)
    while True:
        time.sleep(INTERVAL_S)
        with _lock:
            paths = list(_watched)
        for path in [p for p in open_ if p not in paths]:
            open_.pop(path)[1].close()
        for path in paths:
            _checkpoint(path, open_)


def _checkpoint(path: str, open_: dict[str, tuple[int, sqlite3.Connection]]) -> None:
    try:
        if os.path.getsize(f"{path}-wal") < THRESHOLD_BYTES:
            return
        inode = os.stat(path).st_ino
    except OSError:  # no log (yet), or the file is gone
        return
    held = open_.get(path)
    if held is not None and held[0] != inode:  # the file was replaced: reopen
        open_.pop(path)[1].close()
        held = None
    try:
        if held is None:
            held = open_[path] = (inode, sqlite3.connect(path, timeout=0.1, isolation_level=None))
        held[1].execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error:  # busy or broken: try again next time, on a fresh connection
        with contextlib.suppress(Exception):
            open_.pop(path)[1].close()
