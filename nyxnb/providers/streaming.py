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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

#: Seconds to wait for the first byte of an answer from a model that thinks first.
REASONING_FIRST_BYTE_S = 180.0
#: Seconds an answer may fall silent between two chunks.
DEFAULT_IDLE_S = 60.0
_REASONING_MODEL = re.compile(
    r"^(o[1-9]|gpt-5|gpt-oss|deepseek-r|qwq|.*reason|.*thinking|gemini-(2\.5-pro|3)|claude-opus)",
    re.IGNORECASE,
)
T = TypeVar("T")


def is_reasoning_model(model: str) -> bool:
    """True for models known to think before their first visible token."""
    return bool(_REASONING_MODEL.match(model.rpartition("/")[2]))


@dataclass(frozen=True)
class StreamProgress:
    """How far the answer being generated is: output tokens so far (estimated) and their rate."""

    provider: str
    model: str
    tokens: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second since the first byte."""
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressHook = Callable[[StreamProgress], None]
#: Set by the engine around a call to watch its answer arrive (None: nobody watches).
PROGRESS: ContextVar[ProgressHook | None] = ContextVar("nyxnb_stream_progress", default=None)


class StreamCut(Exception):  # noqa: N818 - translated to a ProviderError by the provider
    """The provider sent nothing for ``seconds``: before its first byte (hung) or mid-answer."""

    def __init__(self, hung: bool, seconds: float, tokens: int = 0) -> None:
        self.hung, self.seconds, self.tokens = hung, seconds, tokens
        what = "no answer at all" if hung else f"the answer stalled after ~{tokens} tokens"
        super().__init__(f"{what} within {seconds:g} s; the call was cut (it may be billed)")


class Watch:
    """One streamed answer: its timeouts, and its progress reported to :data:`PROGRESS`."""

    def __init__(self, provider: str, model: str, first_byte_s: float, idle_s: float) -> None:
        self.provider, self.model = provider, model
        self.first_byte_s, self.idle_s = first_byte_s, idle_s
        self.chars = 0
        self._hook = PROGRESS.get()
        self._began = time.monotonic()
        self._next_report = 0.0

    async def open(self, opening: Awaitable[T]) -> T:
        """Await the request until its answer starts (the status line and headers)."""
        try:
            async with asyncio.timeout(self.first_byte_s):
                return await opening
        except TimeoutError:
            raise StreamCut(True, self.first_byte_s) from None

    async def events(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The stream's events, each within its timeout (no ``async with`` spans a ``yield``)."""
        it, first = aiter(stream), True
        while True:
            limit = self.first_byte_s if first else self.idle_s
            try:
                async with asyncio.timeout(limit):
                    event = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StreamCut(first, limit, self.chars // 4) from None
            first = False
            yield event

    def wrote(self, text: str | None) -> None:
        """Count generated text (visible or thinking) and report progress about 4 times a second."""
        if not text:
            return
        self.chars += len(text)
        if self._hook is None:
            return
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + 0.25
            elapsed = now - self._began
            self._hook(StreamProgress(self.provider, self.model, self.chars // 4, elapsed))
