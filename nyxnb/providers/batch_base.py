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
from dataclasses import dataclass, field, replace

from nyxnb.errors import MissingKey
from nyxnb.providers.base import Completion, CompletionRequest, Provider
from nyxnb.providers.classify import redact

#: Outcomes of one batch item, as every provider reports them (normalised).
SUCCEEDED, ERRORED, EXPIRED, CANCELED = "succeeded", "errored", "expired", "canceled"
#: The error of an item the provider's results do not answer readably.
NO_LINE = "no readable result line for this item in the batch's results"


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

    async def results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """Stream an ended batch's item results (``requests`` by custom id, for the model).

        Every item of ``requests`` gets a result: one the provider left without a readable
        line is ``errored`` (a malformed line is that item's error, the others are ingested).
        Every error text is redacted here, with the provider's key, whatever the SDK echoed.
        """
        secret, seen = self._secret(), set()
        async for result in self.item_results(batch_id, requests):
            seen.add(result.custom_id)
            yield replace(result, error=redact(result.error, secret)) if result.error else result
        for cid in requests:
            if cid not in seen:
                yield BatchItemResult(cid, ERRORED, error=NO_LINE)

    @abstractmethod
    def item_results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """The provider's results, as read (:meth:`results` completes and redacts them)."""

    def _secret(self) -> str | None:
        try:
            return self.provider.api_key() if self.provider.key_env else None
        except MissingKey:
            return None

    @abstractmethod
    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel a batch."""
