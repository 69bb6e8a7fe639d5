"""One 429 gate per provider's batch API, shared by every run of the process.

Every batch-API request (create, the lookup of a batch by its label, status polls, reading
results, cancel) goes through a :class:`~nyxnb.engine.calls.governor.Governor`, the gate live
calls wait at: a 429 holds every request to that batch API for the provider's hint, or without
one backs off about 1 s doubling to 60 s with jitter; while it is limited one request goes (a
probe) and the others wait for its answer.  So a storm of bare 429s during polling costs one
request per interval, however many batches are waiting.

The gate is per batch API, not per model (a status poll names no model), and apart from the
live calls' gates (the batch endpoints are not the Messages / Chat Completions / generateContent
endpoints).  It is shared by the runs of one process and event loop (a matrix of batch variants,
workflows started side by side in a notebook): each run has its own provider pool and its own
live gates, but they all poll the same account.  A gate is keyed by the provider's name and
endpoint URL, so two endpoints never hold each other up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from nyxnb.engine.calls.governor import Governor, Ticket, WaitTooLong
from nyxnb.engine.context import Paused
from nyxnb.errors import ErrorKind, ProviderError
from nyxnb.providers.base import Provider

T = TypeVar("T")

#: The gate's "model": every endpoint of the batch API, whatever the batch's model.
BATCH_API = "batch API"
#: Where each SDK reads the built-in endpoint's URL (the part of a gate's key that tells two
#: servers of one provider apart).
_BASE_URL_VARS = {
    "anthropic": "ANTHROPIC_BASE_URL",
    "openai": "OPENAI_BASE_URL",
    "google": "GOOGLE_GEMINI_BASE_URL",
}
#: Gates per event loop (a gate's asyncio parts belong to one loop); a closed loop's are dropped
#: on the next look-up (a weak key would not do: the gates hold their loop).
_GATES: dict[asyncio.AbstractEventLoop, dict[tuple[str, str], Governor]] = {}


def gate_of(provider: Provider) -> Governor:
    """The batch-API gate of ``provider``'s endpoint on the running loop."""
    endpoint = provider.endpoint
    url = endpoint.spec.base_url if endpoint is not None else None
    url = url or os.environ.get(_BASE_URL_VARS.get(type(provider).name, ""), "")
    for closed in [loop for loop in _GATES if loop.is_closed()]:
        del _GATES[closed]
    gates = _GATES.setdefault(asyncio.get_running_loop(), {})
    key = (provider.name, url or "")
    if key not in gates:
        gates[key] = Governor(provider.name, BATCH_API)
    return gates[key]


async def through(
    provider: Provider,
    request: Callable[[], Awaitable[T]],
    pause: asyncio.Event,
    max_wait_s: float,
) -> T:
    """``request()`` once the provider's batch gate lets it through; the gate learns its outcome.

    Raises :class:`~nyxnb.engine.context.Paused` when ``pause`` is set while waiting,
    :class:`~nyxnb.engine.calls.governor.WaitTooLong` when the wait would pass ``max_wait_s``,
    and the request's :class:`~nyxnb.errors.ProviderError` (a 429 holds the gate first).
    """
    gate = gate_of(provider)
    ticket = await _admitted(gate, pause, max_wait_s)
    try:
        answer = await request()
    except ProviderError as exc:
        if exc.kind == ErrorKind.RATE_LIMITED:
            await gate.throttled(ticket, exc.rate, exc.retry_after)
        else:
            await gate.failed(ticket)
        raise
    except BaseException:
        await gate.failed(ticket)
        raise
    await gate.succeeded(ticket, None, 0, 0, 0)
    return answer


async def results_through(
    provider: Provider,
    results: AsyncIterator[T],
    pause: asyncio.Event,
    max_wait_s: float,
) -> AsyncIterator[T]:
    """``results`` with their first read through the gate (where a 429 would come): the
    rest streams without holding the gate's slot while each result is committed."""
    first = await through(provider, lambda: anext(results, None), pause, max_wait_s)
    if first is None:
        return
    yield first
    async for result in results:
        yield result


async def _admitted(gate: Governor, pause: asyncio.Event, max_wait_s: float) -> Ticket:
    """Wait at ``gate`` unless a pause comes first (then :class:`Paused`)."""
    if pause.is_set():
        raise Paused()
    admit = asyncio.ensure_future(gate.acquire(0.0, max_wait_s))
    paused = asyncio.ensure_future(pause.wait())
    try:
        await asyncio.wait((admit, paused), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside: no ticket may stay out
        await _give_back(gate, admit)
        raise
    finally:
        paused.cancel()
    if not admit.done() or pause.is_set():
        await _give_back(gate, admit)
        raise Paused()
    return admit.result()  # or its WaitTooLong


async def _give_back(gate: Governor, admit: asyncio.Future[Ticket]) -> None:
    """Abandon an admission: cancel it, or hand back the ticket it got (the probe's turn too)."""
    admit.cancel()
    try:
        ticket = await admit
    except (asyncio.CancelledError, WaitTooLong):
        return
    await gate.failed(ticket)
