"""OpenAI Batch API through ``AsyncOpenAI.files`` and ``AsyncOpenAI.batches``.

A batch is a JSONL file uploaded with ``purpose="batch"``, one ``POST /v1/chat/completions``
line per item whose ``body`` is the live provider's own parameters, then ``batches.create``.
The batch carries the engine's row id in its ``metadata``, so :meth:`OpenAIBatches.find`
re-adopts a batch whose id never reached the store (a kill -9 between create and commit).
Results are two files: ``output_file_id`` (answered lines) and ``error_file_id`` (failed lines,
and the ``batch_expired`` / ``batch_cancelled`` lines of requests that never ran).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import openai
from openai.types import Batch
from openai.types.chat import ChatCompletion
from pydantic import ValidationError

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
from nyxnb.providers.classify import HttpFailure, http_error
from nyxnb.providers.openai import OpenAIProvider, completion_of

ENDPOINT = "/v1/chat/completions"
#: The ``metadata`` key holding the engine's ``provider_batches`` row id.
TAG_KEY = "nyxnb_row"
#: Recent batches (newest first) :meth:`OpenAIBatches.find` looks through for a tag.
FIND_SCAN = 1000
#: The hint of a 404 from ``/v1/files`` or ``/v1/batches``: the server has no Batch API.
NO_BATCH_API = (
    "the endpoint (OPENAI_BASE_URL) has no Files + Batches API (OpenAI-compatible local servers "
    "have none): run this fan-out without `batch: true` / `--batch`"
)
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
#: Error codes of the lines OpenAI writes for requests a batch never ran.
_LINE_CODES = {"batch_expired": EXPIRED, "batch_cancelled": CANCELED}
#: What an item with no line at all became, by the batch's final status (else errored).
_UNANSWERED = {"expired": EXPIRED, "cancelled": CANCELED}


class OpenAIBatches(BatchApi):
    """Files + Batches: upload, create, retrieve, list, read output/error files, cancel."""

    provider: OpenAIProvider

    async def submit(self, requests: Sequence[tuple[str, CompletionRequest]], tag: str = "") -> str:
        """Upload the JSONL input file and create a 24 h batch labelled with ``tag``."""
        client = self.provider.client()
        lines = [
            json.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": ENDPOINT,
                    "body": self.provider.params(r),
                }
            )  # fmt: skip
            for cid, r in requests
        ]
        data = ("\n".join(lines) + "\n").encode()
        metadata = {"created_by": "nyxnb"} | ({TAG_KEY: tag} if tag else {})
        try:
            upload = await client.files.create(
                file=("nyxnb-batch.jsonl", data, "application/jsonl"), purpose="batch"
            )
            batch = await client.batches.create(
                input_file_id=upload.id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata=metadata,
            )
        except openai.OpenAIError as exc:
            error = self.provider._error(exc, client.api_key)
            if isinstance(exc, openai.NotFoundError):
                error.hint = NO_BATCH_API
            raise error from exc
        return batch.id

    async def find(self, tag: str) -> str | None:
        """The newest batch whose ``metadata`` carries ``tag`` (among the last ``FIND_SCAN``)."""
        client = self.provider.client()
        try:
            seen = 0
            async for batch in client.batches.list(limit=100):
                if (batch.metadata or {}).get(TAG_KEY) == tag:
                    return batch.id
                seen += 1
                if seen >= FIND_SCAN:
                    break
        except openai.OpenAIError as exc:
            raise self.provider._error(exc, client.api_key) from exc
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's ``status`` and ``request_counts``, in the normalised outcomes."""
        batch = await self._retrieve(batch_id)
        return BatchStatus(batch.status in _ENDED, counts_of(batch), batch.status)

    async def item_results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """Stream the output file, then the error file; items with no line come last."""
        batch = await self._retrieve(batch_id)
        seen: set[str] = set()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            async for line in self._lines(file_id):
                result = self._result(line, requests)
                seen.add(result.custom_id)
                yield result
        outcome = _UNANSWERED.get(batch.status, ERRORED)
        why = "" if outcome != ERRORED else _batch_errors(batch)
        for cid in requests:
            if cid not in seen:
                yield BatchItemResult(cid, outcome, error=why)

    async def cancel(self, batch_id: str) -> None:
        """``POST /v1/batches/{id}/cancel`` (the batch goes ``cancelling``, then ``cancelled``)."""
        client = self.provider.client()
        try:
            await client.batches.cancel(batch_id)
        except openai.OpenAIError as exc:
            raise self.provider._error(exc, client.api_key) from exc

    async def _retrieve(self, batch_id: str) -> Batch:
        client = self.provider.client()
        try:
            return await client.batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise self.provider._error(exc, client.api_key) from exc

    async def _lines(self, file_id: str) -> AsyncIterator[str]:
        """The non-empty lines of a file, streamed (result files reach hundreds of MB)."""
        client = self.provider.client()
        try:
            async with client.files.with_streaming_response.content(file_id) as response:
                async for line in response.iter_lines():
                    if line.strip():
                        yield line
        except openai.OpenAIError as exc:
            raise self.provider._error(exc, client.api_key) from exc

    def _result(self, raw: str, requests: Mapping[str, CompletionRequest]) -> BatchItemResult:
        """One output or error line as an item result."""
        line = _object(raw)
        cid = str(line.get("custom_id", ""))
        response = _object(line.get("response"))
        body = _object(response.get("body"))
        status = response.get("status_code")
        if status == 200 and body.get("choices"):
            request = requests.get(cid)
            model = self.provider.model_for(request) if request else str(body.get("model", ""))
            try:
                completion = completion_of(ChatCompletion.model_validate(body), model, self.name)
            except ValidationError as exc:
                return BatchItemResult(cid, ERRORED, error=f"malformed batch answer: {exc}"[:500])
            return BatchItemResult(cid, SUCCEEDED, completion)
        error = _object(line.get("error")) or _object(body.get("error"))
        code = str(error.get("code") or "")
        if code in _LINE_CODES:
            return BatchItemResult(cid, _LINE_CODES[code])
        return BatchItemResult(cid, ERRORED, error=self._line_error(status, error))

    def _line_error(self, status: object, error: Mapping[str, Any]) -> str:
        """An errored line's message, classified and redacted like a live call's error."""
        failure = HttpFailure(
            status=status if isinstance(status, int) else 400,
            message=str(error.get("message") or "batch line failed"),
            error_type=str(error.get("type") or ""),
            code=str(error.get("code") or ""),
        )
        return http_error(self.name, failure, secret=self.provider.client().api_key).message


def counts_of(batch: Batch) -> dict[str, int]:
    """``request_counts`` (total/completed/failed) as the normalised per-outcome counts."""
    c = batch.request_counts
    total, ok, failed = (c.total, c.completed, c.failed) if c else (0, 0, 0)
    rest = max(total - ok - failed, 0)
    counts = {"processing": 0, SUCCEEDED: ok, ERRORED: failed, EXPIRED: 0, CANCELED: 0}
    if batch.status in _ENDED:
        counts[_UNANSWERED.get(batch.status, ERRORED)] += rest
    else:
        counts["processing"] = rest
    return counts


def _batch_errors(batch: Batch) -> str:
    """Why a whole batch failed (its validation ``errors``; redacted by ``results``)."""
    data = batch.errors.data if batch.errors and batch.errors.data else []
    text = "; ".join(f"{e.code or 'error'}: {e.message or ''}" for e in data)
    return (text or f"batch {batch.status} without a result for this item")[:500]


def _object(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}
