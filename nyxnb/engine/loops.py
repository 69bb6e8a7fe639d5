"""The event loops nyxnb creates: their timers fire on time.

On Linux asyncio's default selector is epoll, and CPython rounds an epoll timeout up twice:
``selectors.EpollSelector`` rounds the seconds up to whole milliseconds and multiplies back
(``9 * 1e-3`` is ``0.009000000000000001``), then ``select.epoll.poll`` rounds that float up
again, to 10 ms.  For 23 of the millisecond counts from 1 to 30 a timer then fires a whole
millisecond late: every group-commit window, rate-limit pause and backoff of a run (measured:
a 20 ms provider call was answered 1.35 ms late on average on the default loop, 0.86 ms on
this one).  ``poll(2)`` takes an integer count of milliseconds, which ``selectors.PollSelector``
rounds once.  (micropython-lib#222 notes the same rounding: "epoll.poll(.001) actually results
in a timeout of 2ms".)

Only the loops nyxnb owns use it: the sync facade's thread (``nyxnb.run`` and friends) and the
CLI.  ``arun`` runs on the caller's loop (Jupyter's), as it is.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: over ``poll(2)`` where asyncio would use epoll, else asyncio's own."""
    if selectors.DefaultSelector is getattr(selectors, "EpollSelector", None):
        return asyncio.SelectorEventLoop(selectors.PollSelector())
    return asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a loop from :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
