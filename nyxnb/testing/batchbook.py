"""What the fake's batch APIs share: batches that end after a delay, planned line outcomes, cancel.

:class:`BatchBook` is the transport-free bookkeeping under the Anthropic (``batches``) and OpenAI
(``batches_openai``) fakes: a batch ends ``delay_s`` after creation, :meth:`BatchBook.plan` makes
chosen lines of the next batch ``errored`` or ``expired``, and a canceled batch ends at once with
its odd lines canceled.  ``on_create`` runs as a batch is created, before the answer is sent (a
test may kill its client there).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: A transport-free answer: status, headers, body bytes.
Response = tuple[int, dict[str, str], bytes]


@dataclass
class FakeBatch:
    """One batch held by the fake."""

    id: str
    requests: list[dict[str, Any]]
    created: float
    outcomes: dict[int, str] = field(default_factory=dict)
    canceled: bool = False
    retrieved: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


def words(text: str) -> int:
    """Tokens as the fake counts them: one per word."""
    return len(text.split())


def text_of(content: Any) -> str:
    """A message's text: a string, or the ``text`` of its content blocks."""
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content or [] if isinstance(b, Mapping))


class BatchBook:
    """The batches of one provider's fake batch API."""

    id_prefix = "batch_fake"

    def __init__(self, delay_s: float = 0.0, min_cache_tokens: int = 1024) -> None:
        self.delay_s, self.min_cache_tokens = delay_s, min_cache_tokens
        self.batches: dict[str, FakeBatch] = {}
        self.calls: list[tuple[str, str]] = []
        self.on_create: Callable[[FakeBatch], None] | None = None
        #: the message of a planned ``errored`` line (a test may make it echo the key)
        self.line_error = "fake batch line error"
        self._plans: deque[dict[int, str]] = deque()
        self._lock = threading.Lock()

    def plan(self, outcomes: Mapping[int, str]) -> BatchBook:
        """Lines of the next created batch (0-based) that end ``errored`` or ``expired``.

        The Anthropic fake also writes ``malformed`` lines (cut JSON that still names its custom
        id) and ``malformed-anonymous`` ones (garbage with no custom id at all).
        """
        self._plans.append(dict(outcomes))
        return self

    def submitted_ids(self) -> list[str]:
        """Every custom id submitted, in order, across all batches."""
        return [r["custom_id"] for b in self.batches.values() for r in b.requests]

    def _new(self, requests: list[dict[str, Any]], **extra: Any) -> FakeBatch:
        """Create and keep a batch (the next plan applies); runs ``on_create``."""
        n = len(self.batches) + 1
        batch = FakeBatch(f"{self.id_prefix}{n:04d}", requests, time.time(), **extra)
        batch.outcomes = self._plans.popleft() if self._plans else {}
        self.batches[batch.id] = batch
        if self.on_create is not None:
            self.on_create(batch)
        return batch

    def _ended(self, batch: FakeBatch) -> bool:
        return batch.canceled or time.time() >= batch.created + self.delay_s

    def _outcome(self, batch: FakeBatch, i: int) -> str:
        planned = batch.outcomes.get(i)
        return planned or ("canceled" if batch.canceled and i % 2 else "succeeded")
