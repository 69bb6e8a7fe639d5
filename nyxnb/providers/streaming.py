"""Streamed calls: the first-byte and idle timeouts, and the progress of the answer being written.

Every live call is streamed (batch calls are not), so a long, healthy answer is never cut by a
timeout on the whole call: the provider must send its first byte within ``first_byte_s`` (a
provider that sends nothing at all is hung: give up and move on) and then never fall silent for
``idle_s``; the total generation time has no cap.  A step with a reasoning setting or a known
reasoning model waits longer for the first byte (:data:`REASONING_FIRST_BYTE_S`), since such
models think before they write.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from nyxnb.errors import PartialUsage

#: Seconds to wait for the first byte of an answer from a model that thinks first.
REASONING_FIRST_BYTE_S = 180.0
#: Seconds an answer may fall silent between two chunks.
DEFAULT_IDLE_S = 60.0
_REASONING_MODEL = re.compile(
    r"^(o[1-9]|gpt-5|gpt-oss|deepseek-r|qwq|.*reason|.*thinking|gemini-(2\.5-pro|3)|claude-opus)",
    re.IGNORECASE,
)


def is_reasoning_model(model: str) -> bool:
    """True for models known to think before their first visible token."""
    return bool(_REASONING_MODEL.match(model.rpartition("/")[2]))


#: Seconds without a first byte before progress names the provider as possibly hung.
SILENT_NOTICE_S = 5.0
_now = time.monotonic  # the watch's one clock (events and its timer alike)


@dataclass(frozen=True)
class StreamProgress:
    """How far the answer being generated is: output tokens so far (estimated) and their rate.

    ``waiting`` is True while no byte has come yet (``elapsed_s`` of silence, given up at
    ``first_byte_s``).
    """

    provider: str
    model: str
    tokens: int
    elapsed_s: float
    waiting: bool = False
    first_byte_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second since the first byte."""
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressHook = Callable[[StreamProgress], None]
#: Set by the engine around a call to watch its answer arrive (None: nobody watches).
PROGRESS: ContextVar[ProgressHook | None] = ContextVar("nyxnb_stream_progress", default=None)


class StreamCut(Exception):  # noqa: N818 - translated to a ProviderError by the provider
    """The provider sent nothing for ``seconds``: before its first byte (hung) or mid-answer.

    ``usage``: a mid-answer cut's tokens, as counted by the provider so far or estimated.
    """

    def __init__(
        self, hung: bool, seconds: float, tokens: int = 0, usage: PartialUsage | None = None
    ) -> None:
        self.hung, self.seconds, self.tokens, self.usage = hung, seconds, tokens, usage
        what = "no answer at all" if hung else f"the answer stalled after ~{tokens} tokens"
        billed = f": {usage.describe()}" if usage is not None else ""
        super().__init__(
            f"{what} within {seconds:g} s; the call was cut (it may be billed{billed})"
        )


#: The input and output tokens a provider has counted so far in its stream (None: not yet).
Counted = Callable[[], tuple[int | None, int | None]]


class Watch:
    """One streamed answer: its timeouts, and its progress reported to :data:`PROGRESS`.

    Use as ``async with watch:`` around the request and the reading of its events, calling
    :meth:`wrote` with each event's text, or :meth:`tick` for an event without text.  A single
    timer per call (not one per event) cancels the reading when the provider falls silent too
    long; leaving the block then raises :class:`StreamCut`.  An event costs one call and one
    clock read: the reading loop is the hot path of every streamed answer.
    """

    def __init__(self, provider: str, model: str, first_byte_s: float, idle_s: float) -> None:
        self.provider, self.model = provider, model
        self.first_byte_s, self.idle_s = first_byte_s, idle_s
        self.chars = 0
        self._hook = PROGRESS.get()
        self._began = time.monotonic()
        self._next_report = 0.0
        self._first = True  # no event yet
        self._cut = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: set by the provider's accumulator: what the stream counted so far (for a cut)
        self.counted: Counted | None = None

    async def __aenter__(self) -> Watch:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._last = _now()
        self._arm(self._last + min(self.first_byte_s, SILENT_NOTICE_S))
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._cut and kind is asyncio.CancelledError and self._task is not None:
            if self._task.uncancel() > 0:
                return  # cancelled from outside as well: let that cancellation through
            limit = self.first_byte_s if self._first else self.idle_s
            usage = None if self._first else self.partial()
            raise StreamCut(self._first, limit, self.chars // 4, usage)

    def partial(self) -> PartialUsage:
        """The tokens used so far: the provider's counts where its stream carried them, else
        (output) the text received at 4 characters a token."""
        counted_in, counted_out = self.counted() if self.counted is not None else (None, None)
        if counted_out is None:
            return PartialUsage(counted_in, self.chars // 4, False)
        return PartialUsage(counted_in, counted_out, True)

    def tick(self) -> None:
        """The provider sent something: the silence starts again."""
        self._last = _now()
        self._first = False

    def opened(self) -> None:
        """The answer's headers came: its first event gets ``first_byte_s`` again."""
        self._last = _now()

    def _arm(self, at: float) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(max(at - _now(), 0.0), self._check)

    def _check(self) -> None:
        """The timer: cut a silence past its limit, else look again when it could be."""
        assert self._task is not None
        now = _now()
        limit = self.first_byte_s if self._first else self.idle_s
        deadline = self._last + limit
        if now >= deadline:
            self._cut = True
            self._task.cancel()
            return
        if self._first and self._hook is not None and now - self._last >= SILENT_NOTICE_S:
            waited = time.monotonic() - self._began
            self._hook(StreamProgress(self.provider, self.model, 0, waited, True, limit))
        notice = now + SILENT_NOTICE_S if self._first else deadline
        self._arm(min(deadline, notice))

    def wrote(self, text: str | None) -> None:
        """The provider sent text (visible or thinking): the silence starts again (as
        :meth:`tick`), the text is counted, and progress is reported about 4 times a second."""
        self._last = now = _now()
        self._first = False
        if not text:
            return
        self.chars += len(text)
        if self._hook is None:
            return
        if now >= self._next_report:
            self._next_report = now + 0.25
            elapsed = now - self._began
            self._hook(StreamProgress(self.provider, self.model, self.chars // 4, elapsed))
