"""How an awaited notebook run ends: an interrupt pauses it, a pause or failure is one line.

``await WorkflowProgress.arun(...)`` runs the workflow on the engine's thread and awaits it. The
toolbar's stop button makes ipykernel cancel the awaiting cell (a ``CancelledError``; a plain
``KeyboardInterrupt`` elsewhere): the run is asked to pause, as the CLI's Ctrl-C does, so the
answers in flight finish and are kept, and the cell waits for it to stop. A run that ended
paused or failed raises :class:`~nyxnb.errors.WorkflowStopped`, one line without a traceback,
so *Run All* stops there; a run that completed before the interrupt landed says so and raises
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

from nyxnb.engine.api import RunResult
from nyxnb.errors import RunError, WorkflowStopped
from nyxnb.store.models import COMPLETED, PAUSED

#: On an interrupt, how long the cell waits for the pause to land (items in flight finish).
INTERRUPT_WAIT_S = 60.0
#: How often the awaiting cell wakes the kernel's loop (see :func:`wait_awake`).
WAKE_S = 0.2


async def wait_awake(waiting: asyncio.Future[RunResult]) -> RunResult:
    """Await ``waiting``, waking the loop every ``WAKE_S``.

    ipykernel 7 turns SIGINT (the stop button) into a callback that cancels the cell, added to
    its loop without waking it: a cell that awaits only a thread's future saw the cancel when
    the run ended, seconds or minutes later. Waking the loop lets the cancel land at once.
    """
    while not waiting.done():
        await asyncio.wait({waiting}, timeout=WAKE_S)
    return waiting.result()


async def pause_on_interrupt(future: Future[RunResult], pause: Callable[[], None]) -> None:
    """Ask the run to pause (items in flight finish and are kept) and wait for it to stop."""
    if not future.done():
        try:
            await asyncio.to_thread(pause)
        except RunError:  # it finished (or paused) meanwhile: nothing to pause
            pass
    done, _ = await asyncio.to_thread(wait_futures, [future], INTERRUPT_WAIT_S)
    if not done:
        wait = f"{INTERRUPT_WAIT_S:.0f} s"
        print(f"interrupted: pause asked, but the run has not stopped within {wait}; it goes "
              "on in the background (the widget follows it)")  # fmt: skip


def outcome(future: Future[RunResult], interrupted: bool, why: str) -> None:
    """Raise :class:`WorkflowStopped` for a paused or failed run (``why``: where, how to go on)."""
    if not future.done() or future.exception() is not None:
        return  # still running, or result() raises it where the caller asks
    result = future.result()
    if result.status == COMPLETED:
        if interrupted:
            print(f"the run had completed before the interrupt: nothing to pause "
                  f"({result.workflow_id})")  # fmt: skip
        return
    line = why or result.error or result.status
    if interrupted and result.status == PAUSED:
        line = f"interrupted (■): {line}; the answers in flight were kept"
    raise WorkflowStopped(result.workflow_id, result.status, line)


__all__ = ["INTERRUPT_WAIT_S", "WAKE_S", "outcome", "pause_on_interrupt", "wait_awake"]
