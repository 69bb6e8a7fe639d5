"""Anthropic Message Batches through ``AsyncAnthropic.messages.batches``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence

import anthropic
from anthropic.types.messages import MessageBatchIndividualResponse
from pydantic import ValidationError

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

#: The custom id in a results line too broken to parse.
_CUSTOM_ID = re.compile(r'"custom_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')


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

    async def item_results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """Stream the results file, one line per item, each read on its own.

        The SDK's decoder raises on the first line that is not JSON and loses the rest of the
        file; here a malformed line is that item's error (its custom id read from the broken
        text when it can be; an item without a line at all is errored by ``results``).
        """
        client = self.provider.client()
        try:
            decoder = await client.messages.batches.results(batch_id)
            async for raw in decoder.http_response.aiter_lines():
                if raw.strip():
                    yield self._line(raw, requests)
        except anthropic.AnthropicError as exc:
            raise self.provider._error(exc, client.api_key) from exc

    def _line(self, raw: str, requests: Mapping[str, CompletionRequest]) -> BatchItemResult:
        try:
            line = MessageBatchIndividualResponse.model_validate_json(raw)
        except ValidationError as exc:
            found = _CUSTOM_ID.search(raw)
            why = f"malformed result line: {exc.errors()[0]['msg']}"
            return BatchItemResult(found[1] if found else "", ERRORED, error=why)
        result, cid = line.result, line.custom_id
        if result.type == "succeeded":
            request = requests.get(cid)
            model = self.provider.model_for(request) if request else result.message.model
            return BatchItemResult(cid, SUCCEEDED, completion_of(result.message, model, self.name))
        if result.type == "errored":
            return BatchItemResult(cid, ERRORED, error=str(result.error.error.message))
        return BatchItemResult(cid, EXPIRED if result.type == "expired" else CANCELED)

    async def cancel(self, batch_id: str) -> None:
        """``POST /v1/messages/batches/{id}/cancel``."""
        client = self.provider.client()
        try:
            await client.messages.batches.cancel(batch_id)
        except anthropic.AnthropicError as exc:
            raise self.provider._error(exc, client.api_key) from exc
