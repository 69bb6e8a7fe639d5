"""The batch-API interface: submit many requests at half price, poll, read results, cancel.

One implementation per SDK (``batch_anthropic``, ``batch_google``, ``batch_openai``,
``batch_offline``); the engine (:mod:`nyxnb.engine.batch.submit`) owns durability, polling and
ingestion.  ``submit`` gets the engine's ``provider_batches`` row id as ``tag``; an API that can
label a batch with it (OpenAI's ``metadata``, Gemini's ``displayName``) implements
:meth:`BatchApi.find`, so a batch created just before a kill -9, whose id never reached the
store, is re-adopted instead of billed twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from nyxnb.providers.base import Completion, CompletionRequest, Provider

#: Outcomes of one batch item, as every provider reports them (normalised).
SUCCEEDED, ERRORED, EXPIRED, CANCELED = "succeeded", "errored", "expired", "canceled"


@dataclass(frozen=True)
class BatchStatus:
    """A batch as the provider reports it: ended or not, and its per-outcome counts."""

    ended: bool
    counts: dict[str, int] = field(default_factory=dict)
    raw_state: str = ""

    @property
    def done(self) -> int:
        """Items the provider has finished, whatever their outcome."""
        return sum(v for k, v in self.counts.items() if k != "processing")


@dataclass(frozen=True)
class BatchItemResult:
    """One item of an ended batch: a completion, or why there is none."""

    custom_id: str
    outcome: str  # succeeded | errored | expired | canceled
    completion: Completion | None = None
    error: str = ""


class BatchApi(ABC):
    """A provider's batch API, driven through its official SDK client."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    @property
    def name(self) -> str:
        """The provider's name."""
        return self.provider.name

    @abstractmethod
    async def submit(self, requests: Sequence[tuple[str, CompletionRequest]], tag: str = "") -> str:
        """Create a batch of ``(custom_id, request)`` and return the provider's batch id.

        Args:
            requests: the items, each with its custom id (unique within the batch).
            tag: the engine's row id for the batch; label the batch with it where the API can.
        """

    async def find(self, tag: str) -> str | None:
        """The id of a batch submitted with ``tag``, or None (also: the API cannot label)."""
        return None

    @abstractmethod
    async def status(self, batch_id: str) -> BatchStatus:
        """Retrieve a batch's processing state and counts."""

    @abstractmethod
    def results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """Stream an ended batch's item results (``requests`` by custom id, for the model)."""

    @abstractmethod
    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel a batch."""
