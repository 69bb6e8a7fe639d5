"""Anthropic Message Batches through ``AsyncAnthropic.messages.batches``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import anthropic

from nyxnb.providers.anthropic import AnthropicProvider, completion_of
from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.batch_base import (
    CANCELED,
    ERRORED,
    EXPIRED,
    SUCCEEDED,
    BatchApi,
    BatchItemResult,
    BatchStatus,
)


class AnthropicBatches(BatchApi):
    """``POST /v1/messages/batches``, retrieve, results (JSONL) and cancel."""

    provider: AnthropicProvider

    async def submit(self, requests: Sequence[tuple[str, CompletionRequest]], tag: str = "") -> str:
        """Create a Message Batch; prompts keep their ``cache_control`` marks."""
        client = self.provider.client()
        body = [{"custom_id": cid, "params": self.provider.params(r)} for cid, r in requests]
        try:
            batch = await client.messages.batches.create(requests=body)  # type: ignore[arg-type]
        except anthropic.AnthropicError as exc:
            raise self.provider._error(exc, client.api_key) from exc
        return str(batch.id)

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's ``processing_status`` and ``request_counts``."""
        client = self.provider.client()
        try:
            batch = await client.messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as exc:
            raise self.provider._error(exc, client.api_key) from exc
        c = batch.request_counts
        counts = {
            "processing": c.processing,
            SUCCEEDED: c.succeeded,
            ERRORED: c.errored,
            EXPIRED: c.expired,
            CANCELED: c.canceled,
        }
        return BatchStatus(batch.processing_status == "ended", counts, batch.processing_status)

    async def results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """Stream the results file, one line per item."""
        client = self.provider.client()
        try:
            lines = await client.messages.batches.results(batch_id)
        except anthropic.AnthropicError as exc:
            raise self.provider._error(exc, client.api_key) from exc
        async for line in lines:
            result, cid = line.result, line.custom_id
            if result.type == "succeeded":
                request = requests.get(cid)
                model = self.provider.model_for(request) if request else result.message.model
                completion = completion_of(result.message, model, self.name)
                yield BatchItemResult(cid, SUCCEEDED, completion)
            elif result.type == "errored":
                yield BatchItemResult(cid, ERRORED, error=str(result.error.error.message))
            else:
                yield BatchItemResult(cid, EXPIRED if result.type == "expired" else CANCELED)

    async def cancel(self, batch_id: str) -> None:
        """``POST /v1/messages/batches/{id}/cancel``."""
        client = self.provider.client()
        try:
            await client.messages.batches.cancel(batch_id)
        except anthropic.AnthropicError as exc:
            raise self.provider._error(exc, client.api_key) from exc
