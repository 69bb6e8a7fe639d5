"""Gemini batch mode through ``google-genai`` (``client.aio.batches``; ``files`` for big ones).

The Batch API is served under ``v1beta`` (google-genai 3.x defaults to ``v1``), so every call
pins ``api_version="v1beta"`` in its per-request ``http_options``.

``submit`` sends ``POST v1beta/models/{model}:batchGenerateContent`` with every item inlined
(``batch.inputConfig.requests.requests[{request, metadata: {key: custom_id}}]``) and a
``displayName`` of ``nyxnb-<tag>`` (the engine's row id), so :meth:`GoogleBatches.find` can
re-adopt a batch whose id was never recorded.  A create request is limited to 20 MB, so a larger
batch (a 1,000-item fan-out sharing a 2,000-token context is one) goes the documented other
way: a JSONL file of ``{key, request}`` lines uploaded through the Files API
(``client.aio.files.upload``, up to 2 GB) and ``inputConfig.fileName``; its results are the
``responsesFile`` (``client.aio.files.download``), one ``{key, response | error}`` line each.

``status`` reads ``v1beta/batches/{id}``: ``JOB_STATE_SUCCEEDED``, ``FAILED``, ``CANCELLED``,
``EXPIRED`` (and ``PARTIALLY_SUCCEEDED``) end a batch.  The Developer API reports
``batchStats`` counts, but google-genai (3.x) drops them when it converts the operation, so
while a batch runs its counts are empty (its state tells pending from running); once it ends they
come from its responses.  ``results`` pairs each inlined response with its item by the echoed
``metadata.key``, or -- the API returns responses in request order, and does not always echo
the metadata -- by position when every item has one.  An item with no response is ``expired``
(the batch expired), ``canceled`` (canceled) or ``errored`` (the batch failed).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence

from google.genai import types

from nyxnb.providers import structured
from nyxnb.providers.base import CompletionRequest, Provider
from nyxnb.providers.batch_base import (
    CANCELED,
    ERRORED,
    EXPIRED,
    SUCCEEDED,
    BatchApi,
    BatchItemResult,
    BatchStatus,
)
from nyxnb.providers.classify import HttpFailure, classify
from nyxnb.providers.google import GoogleProvider, completion_of, config_of, contents_of

#: The Gemini API's limit on one inlined batch-create request; a margin is kept for the JSON.
INLINE_LIMIT_BYTES = 20 * 1024 * 1024
_MARGIN = 0.95
#: Ended states, and the outcome of an item the batch left without a response.
_ENDED = {
    "JOB_STATE_SUCCEEDED": ERRORED,  # every item should have a response; one without failed
    "JOB_STATE_PARTIALLY_SUCCEEDED": ERRORED,
    "JOB_STATE_FAILED": ERRORED,
    "JOB_STATE_CANCELLED": CANCELED,
    "JOB_STATE_EXPIRED": EXPIRED,
}
#: google.rpc codes of an item's error, as the HTTP status the live API sends with them.
_RPC_STATUS = {1: 499, 3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 9: 400, 13: 500, 14: 503, 16: 401}
#: Batches scanned by :meth:`GoogleBatches.find` (newest first) before giving up.
FIND_LIMIT = 500
_TAG_PREFIX = "nyxnb-"
#: Where the Developer API serves batch mode (the SDK's default version is ``v1``).
_V1BETA = types.HttpOptions(api_version="v1beta")


class GoogleBatches(BatchApi):
    """``models/{model}:batchGenerateContent``, ``batches/{id}`` (get, list, ``:cancel``)."""

    provider: GoogleProvider

    def __init__(self, provider: Provider) -> None:
        super().__init__(provider)
        self._ended: dict[str, tuple[types.BatchJob, list[types.InlinedResponse]]] = {}

    async def submit(self, requests: Sequence[tuple[str, CompletionRequest]], tag: str = "") -> str:
        """Create one batch of every item (inlined, or a JSONL file if large); its name."""
        models = {self.provider.model_for(r) for _, r in requests}
        if len(models) != 1:
            raise ValueError(f"a Gemini batch has one model; these items ask for {sorted(models)}")
        model, name = models.pop(), f"{_TAG_PREFIX}{tag or 'batch'}"
        src: list[types.InlinedRequest] | str
        if _size(requests) <= INLINE_LIMIT_BYTES * _MARGIN:
            src = [
                types.InlinedRequest(
                    contents=contents_of(r), config=config_of(r), metadata={"key": cid}
                )
                for cid, r in requests
            ]
        else:
            src = await self._upload(requests, name)
        config = types.CreateBatchJobConfig(display_name=name, http_options=_V1BETA)
        job = await self.provider.sdk_call(
            lambda c: c.aio.batches.create(model=model, src=src, config=config)
        )
        return str(job.name)

    async def _upload(self, requests: Sequence[tuple[str, CompletionRequest]], name: str) -> str:
        """The items as a JSONL file in the Files API; its name (``files/...``)."""
        lines = (json.dumps({"key": cid, "request": rest_request(r)}) for cid, r in requests)
        data = io.BytesIO("\n".join(lines).encode())
        config = types.UploadFileConfig(mime_type="jsonl", display_name=name, http_options=_V1BETA)
        file = await self.provider.sdk_call(lambda c: c.aio.files.upload(file=data, config=config))
        return str(file.name)

    async def find(self, tag: str) -> str | None:
        """The name of the batch submitted with ``tag`` (its display name), if one was."""
        wanted = f"{_TAG_PREFIX}{tag}"
        config = types.ListBatchJobsConfig(page_size=100, http_options=_V1BETA)
        pager = await self.provider.sdk_call(lambda c: c.aio.batches.list(config=config))
        seen = 0
        async for job in pager:
            if job.display_name == wanted:
                return str(job.name)
            seen += 1
            if seen >= FIND_LIMIT:
                break
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's state; counts from its responses once it has ended."""
        job = await self._get(batch_id)
        state = _state(job)
        if state not in _ENDED:
            return BatchStatus(False, {}, state)  # google-genai drops batchStats
        responses = await self._responses(job)
        self._ended[batch_id] = job, responses
        counts = dict.fromkeys(("processing", SUCCEEDED, ERRORED, EXPIRED, CANCELED), 0)
        for response in responses:
            counts[SUCCEEDED if response.response is not None else ERRORED] += 1
        return BatchStatus(True, counts, state)

    async def item_results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """Each item's answer from the inlined responses, or why it has none."""
        ended = self._ended.pop(batch_id, None)
        if ended is None:
            job = await self._get(batch_id)
            ended = job, await self._responses(job)
        job, responses = ended
        missing = _ENDED.get(_state(job), ERRORED)
        seen: set[str] = set()
        for cid, response in _paired(responses, list(requests)):
            if cid in requests and cid not in seen:
                seen.add(cid)
                yield self._item(cid, response, requests[cid])
        why = f"no response: the batch ended {_state(job)}" + _job_error(job)
        for cid in requests:
            if cid not in seen:
                yield BatchItemResult(cid, missing, error=why)

    async def cancel(self, batch_id: str) -> None:
        """``POST batches/{id}:cancel``."""
        config = types.CancelBatchJobConfig(http_options=_V1BETA)
        await self.provider.sdk_call(lambda c: c.aio.batches.cancel(name=batch_id, config=config))

    async def _responses(self, job: types.BatchJob) -> list[types.InlinedResponse]:
        """The ended batch's responses: inlined, or read from its responses file."""
        if job.dest is None:
            return []
        if not job.dest.file_name:
            return list(job.dest.inlined_responses or [])
        config = types.DownloadFileConfig(http_options=_V1BETA)
        name = job.dest.file_name
        raw = await self.provider.sdk_call(lambda c: c.aio.files.download(file=name, config=config))
        return [_line(json.loads(line)) for line in raw.splitlines() if line.strip()]

    async def _get(self, batch_id: str) -> types.BatchJob:
        config = types.GetBatchJobConfig(http_options=_V1BETA)
        return await self.provider.sdk_call(
            lambda c: c.aio.batches.get(name=batch_id, config=config)
        )

    def _item(
        self, cid: str, response: types.InlinedResponse, request: CompletionRequest
    ) -> BatchItemResult:
        if response.response is None:
            error = response.error or types.JobError()
            failure = HttpFailure(_RPC_STATUS.get(error.code or 0, 500), error.message or "")
            message = f"{classify(failure)} (code {error.code}): {failure.message or 'error'}"
            return BatchItemResult(cid, ERRORED, error=message)  # redacted by results()
        model = self.provider.model_for(request)
        return BatchItemResult(cid, SUCCEEDED, completion_of(response.response, model, self.name))


def _state(job: types.BatchJob) -> str:
    return str(getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED")


def rest_request(request: CompletionRequest) -> dict[str, object]:
    """A GenerateContentRequest as REST JSON (a JSONL line's ``request``)."""
    body: dict[str, object] = {
        "contents": [
            c.model_dump(mode="json", by_alias=True, exclude_none=True)
            for c in contents_of(request)
        ]
    }
    if request.system:
        body["systemInstruction"] = {"parts": [{"text": request.system}]}
    generation: dict[str, object] = {"maxOutputTokens": request.max_tokens}
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    generation.update(structured.google_rest(request.output_schema))  # data: output_schema
    return body | {"generationConfig": generation}


def _line(line: Mapping[str, object]) -> types.InlinedResponse:
    """A responses-file line as the SDK's inlined response (its ``key`` as metadata)."""
    response, error = line.get("response"), line.get("error")
    return types.InlinedResponse(
        response=types.GenerateContentResponse.model_validate(response) if response else None,
        error=types.JobError.model_validate(error) if error else None,
        metadata={"key": str(line.get("key") or "")},
    )


def _job_error(job: types.BatchJob) -> str:
    return f" ({job.error.message})" if job.error and job.error.message else ""


def _paired(
    responses: list[types.InlinedResponse], cids: list[str]
) -> list[tuple[str, types.InlinedResponse]]:
    """(custom id, response): by the echoed key, else by position when the counts match."""
    keys = [(r.metadata or {}).get("key") for r in responses]
    if all(keys):
        return [(str(k), r) for k, r in zip(keys, responses, strict=True)]
    if len(responses) == len(cids):
        return list(zip(cids, responses, strict=True))
    return []  # neither keys nor a full set: every item is retried rather than mis-assigned


def _size(requests: Sequence[tuple[str, CompletionRequest]]) -> int:
    """About the bytes of an inlined create request (the text, JSON-escaped)."""
    return sum(
        len(json.dumps([cid, r.system, [m.content for m in r.messages]]).encode())
        for cid, r in requests
    )
