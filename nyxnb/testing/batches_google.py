"""The fake's Gemini batch mode (inlined ``batchGenerateContent``) and implicit caching.

:class:`FakeGeminiBatches` speaks the Gemini Developer API's batch endpoints as google-genai
sends them, under ``/v1beta`` where the API serves them (``/v1/batches`` is OpenAI's):

- ``POST /v1beta/models/{model}:batchGenerateContent`` with ``batch.inputConfig.requests.requests``
  (each ``{request, metadata: {key}}``): a long-running operation ``batches/fakegem0001``;
- ``GET /v1beta/batches/{id}``: the operation, its ``metadata`` the ``GenerateContentBatch``
  (``state`` ``BATCH_STATE_PENDING``/``RUNNING``/``SUCCEEDED``/``CANCELLED``/``EXPIRED``,
  ``batchStats``, and once ended ``output.inlinedResponses.inlinedResponses`` in request order,
  each with ``response`` or ``error`` and the echoed ``metadata``);
- ``POST /v1beta/batches/{id}:cancel`` and ``GET /v1beta/batches`` (``pageSize``/``pageToken``);
- the Files API's resumable upload (``POST /upload/v1beta/files``: ``start``, then ``upload,
  finalize``) and ``GET /v1beta/files/{id}:download``, for batches given as a JSONL file
  (``inputConfig.fileName``; the results are then ``output.responsesFile``, one
  ``{key, response | error}`` line per answered item).

The bookkeeping (delay, planned ``errored``/``expired`` lines, cancel, call log) is the shared
:class:`~nyxnb.testing.batchbook.BatchBook`.  Gemini expires a whole batch, not a line: a batch
with a planned ``expired`` line ends ``BATCH_STATE_EXPIRED`` and those lines have no response
(a canceled batch likewise leaves its odd lines out).  ``echo_metadata = False`` answers
without the items' metadata, as the API sometimes does, so clients must fall back on order.

Implicit caching as Gemini 2.5 does it: a request whose leading words repeat those of an
earlier request by at least ``min_cache_tokens`` reports them as ``cachedContentTokenCount``
(1 token per word, like the rest of the fake).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nyxnb.testing.batchbook import BatchBook, FakeBatch, Response
from nyxnb.testing.faults import Reply
from nyxnb.testing.wire import prompt_of, reply_body, schema_of

#: The routes, as ``(method, pattern)``; ``handle`` tells them apart again.
CREATE = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):batchGenerateContent$")
BATCH = re.compile(r"^/v1beta/batches/(?P<id>[^/:]+)(?P<cancel>:cancel)?$")
LIST = re.compile(r"^/v1beta/batches$")
UPLOAD = re.compile(r"^/upload/v1beta/files$")
DOWNLOAD = re.compile(r"^/v1beta/files/(?P<id>[^/:]+):download$")
ROUTES = (("POST", CREATE), ("GET", BATCH), ("POST", BATCH), ("GET", LIST), ("POST", UPLOAD),
          ("GET", DOWNLOAD))  # fmt: skip
_JSON = {"Content-Type": "application/json"}
_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta."
_STAMP = "2026-12-01T00:00:00Z"
_KEEP_PREFIXES = 16  # earlier prompts remembered for implicit caching


class FakeGeminiBatches(BatchBook):
    """Gemini batch mode and implicit prompt caching, transport-free."""

    id_prefix = "batches/fakegem"

    def __init__(self, delay_s: float = 0.0, min_cache_tokens: int = 1024) -> None:
        super().__init__(delay_s, min_cache_tokens)
        self.echo_metadata = True
        self._seen: list[list[str]] = []
        self._outputs: dict[str, list[dict[str, Any]]] = {}  # answered once, when ended
        self.files: dict[str, bytes] = {}  # Files API: name -> content (uploads and results)
        self._uploads: dict[str, bytearray] = {}

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response | None:
        """Answer a batch or file request, or None if ``path`` is not one of its endpoints."""
        url = urlsplit(path)
        with self._lock:
            if method == "POST" and UPLOAD.match(url.path):
                self.calls.append((method, url.path))
                return self._upload(headers, parse_qs(url.query), body)
            if method == "GET" and (match := DOWNLOAD.match(url.path)):
                self.calls.append((method, url.path))
                content = self.files.get(f"files/{match['id']}")
                if content is None:
                    return _error(404, "NOT_FOUND", f"file {match['id']} not found")
                return 200, {"Content-Type": "application/octet-stream"}, content
            if method == "POST" and (match := CREATE.match(url.path)):
                self.calls.append((method, path))
                return self._create(match["model"], json.loads(body or b"{}"))
            if method == "GET" and LIST.match(url.path):
                self.calls.append((method, path))
                return self._list(parse_qs(url.query))
            match = BATCH.match(url.path)
            if match is None or (method == "POST") != bool(match["cancel"]):
                return None
            self.calls.append((method, path))
            batch = self.batches.get(f"batches/{match['id']}")
            if batch is None:
                return _error(404, "NOT_FOUND", f"batch {match['id']} not found")
            if match["cancel"]:
                batch.canceled = True
                return 200, _JSON, b"{}"
            batch.retrieved += 1
            return 200, _JSON, json.dumps(self._operation(batch)).encode()

    def response(self, request: Mapping[str, Any], n: int) -> dict[str, Any]:
        """A generateContent answer for ``request``, reporting implicitly cached tokens."""
        texts = [p.get("text", "") for c in request.get("contents", []) for p in c["parts"]]
        system = request.get("systemInstruction") or {}
        texts = [p.get("text", "") for p in system.get("parts", [])] + texts
        tokens = " ".join(str(t) for t in texts).split()
        reply = Reply(input_tokens=len(tokens), cached_tokens=self._cached(tokens))
        model = str(request.get("model", "")).removeprefix("models/")
        return reply_body(
            "google", reply, model, prompt_of("google", request), n, schema_of("google", request)
        )

    def _cached(self, tokens: list[str]) -> int:
        best = max((_common(tokens, earlier) for earlier in self._seen), default=0)
        self._seen = [*self._seen[-_KEEP_PREFIXES + 1 :], tokens]
        return best if best >= self.min_cache_tokens else 0

    def _create(self, model: str, body: Mapping[str, Any]) -> Response:
        spec = body.get("batch") or {}
        source = spec.get("inputConfig") or {}
        requests = (source.get("requests") or {}).get("requests")
        file_name = str(source.get("fileName") or "")
        if file_name:
            if file_name not in self.files:
                return _error(404, "NOT_FOUND", f"{file_name} not found")
            lines = [json.loads(x) for x in self.files[file_name].splitlines() if x.strip()]
            requests = [{"request": x["request"], "metadata": {"key": x["key"]}} for x in lines]
        if not requests:
            return _error(400, "INVALID_ARGUMENT", "batch.input_config has no requests")
        meta = {"model": model, "displayName": str(spec.get("displayName") or "")}
        kept = [{"custom_id": (r.get("metadata") or {}).get("key", ""), **r} for r in requests]
        batch = self._new(kept, metadata=meta | {"fileName": file_name})  # custom_id: the key
        return 200, _JSON, json.dumps(self._operation(batch)).encode()

    def _upload(
        self, headers: Mapping[str, str], query: Mapping[str, list[str]], body: bytes
    ) -> Response:
        """The resumable upload: ``start`` gives an upload URL, chunks follow, then finalize."""
        command = headers.get("x-goog-upload-command", "")
        if command == "start":
            upload_id = str(len(self._uploads) + 1)
            self._uploads[upload_id] = bytearray()
            url = f"http://{headers.get('host', '')}/upload/v1beta/files?upload_id={upload_id}"
            return 200, _JSON | {"x-goog-upload-url": url}, b"{}"
        upload_id = (query.get("upload_id") or [""])[0]
        if upload_id not in self._uploads:
            return _error(404, "NOT_FOUND", f"no upload {upload_id}")
        self._uploads[upload_id] += body
        if "finalize" not in command:
            return 200, _JSON | {"x-goog-upload-status": "active"}, b"{}"
        name = f"files/fakeup{int(upload_id):04d}"
        self.files[name] = bytes(self._uploads.pop(upload_id))
        file = {"name": name, "mimeType": "jsonl", "sizeBytes": str(len(self.files[name]))}
        file |= {"state": "ACTIVE", "source": "UPLOADED"}
        return 200, _JSON | {"x-goog-upload-status": "final"}, json.dumps({"file": file}).encode()

    def _list(self, query: Mapping[str, list[str]]) -> Response:
        size = int((query.get("pageSize") or ["50"])[0])
        start = int((query.get("pageToken") or ["0"])[0])
        newest = list(reversed(self.batches.values()))
        page = [self._operation(b) for b in newest[start : start + size]]
        body: dict[str, Any] = {"operations": page}
        if start + size < len(newest):
            body["nextPageToken"] = str(start + size)
        return 200, _JSON, json.dumps(body).encode()

    def _state(self, batch: FakeBatch) -> str:
        if not self._ended(batch):
            return "BATCH_STATE_RUNNING" if batch.retrieved else "BATCH_STATE_PENDING"
        if batch.canceled:
            return "BATCH_STATE_CANCELLED"
        expired = any(o == "expired" for o in batch.outcomes.values())
        return "BATCH_STATE_EXPIRED" if expired else "BATCH_STATE_SUCCEEDED"

    def _operation(self, batch: FakeBatch) -> dict[str, Any]:
        """The ``batches/{id}`` operation; ``done`` with the output once the batch ended."""
        state, n = self._state(batch), len(batch.requests)
        outcomes = [self._outcome(batch, i) for i in range(n)] if self._ended(batch) else []
        stats = {"requestCount": str(n), "pendingRequestCount": str(n - len(outcomes))}
        stats["successfulRequestCount"] = str(outcomes.count("succeeded"))
        stats["failedRequestCount"] = str(outcomes.count("errored"))
        meta: dict[str, Any] = {
            "@type": _TYPE + "GenerateContentBatch",
            "model": f"models/{batch.metadata['model']}",
            "name": batch.id,
            "displayName": batch.metadata["displayName"],
            "createTime": _STAMP,
            "updateTime": _STAMP,
            "batchStats": stats,
            "state": state,
        }
        operation: dict[str, Any] = {"name": batch.id, "metadata": meta}
        if outcomes:
            if batch.id not in self._outputs:
                self._outputs[batch.id] = self._output(batch, outcomes)
            output = self._output_of(batch)
            meta |= {"endTime": _STAMP, "output": output}
            operation |= {"done": True, "response": {"@type": _TYPE + "GenerateContentBatchOutput"}}
            operation["response"] |= output
        return operation

    def _output_of(self, batch: FakeBatch) -> dict[str, Any]:
        """``inlinedResponses``, or a ``responsesFile`` of JSONL lines for a file batch."""
        answers = self._outputs[batch.id]
        if not batch.metadata["fileName"]:
            return {"inlinedResponses": {"inlinedResponses": [self._echoed(a) for a in answers]}}
        name = batch.id.replace("batches/", "files/") + "-out"
        lines = [{"key": a["metadata"].get("key")} | _without_metadata(a) for a in answers]
        self.files[name] = "\n".join(json.dumps(x) for x in lines).encode()
        return {"responsesFile": name}

    def _echoed(self, answer: dict[str, Any]) -> dict[str, Any]:
        return answer if self.echo_metadata else _without_metadata(answer)

    def _output(self, batch: FakeBatch, outcomes: list[str]) -> list[dict[str, Any]]:
        """The items' inlined responses, in request order (expired/canceled lines left out)."""
        out = []
        for i, (item, outcome) in enumerate(zip(batch.requests, outcomes, strict=True)):
            answer: dict[str, Any] = {}
            if outcome == "succeeded":
                answer["response"] = self.response(_with_model(item["request"], batch), i)
            elif outcome == "errored":
                answer["error"] = {"code": 13, "message": self.line_error}
            else:
                continue
            out.append(answer | {"metadata": item.get("metadata") or {}})
        return out


def _without_metadata(answer: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "metadata"}


def _common(a: list[str], b: list[str]) -> int:
    """How many leading words ``a`` and ``b`` share (binary search on C-speed slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _with_model(request: Mapping[str, Any], batch: FakeBatch) -> dict[str, Any]:
    return {"model": batch.metadata["model"], **request}


def _error(status: int, kind: str, message: str) -> Response:
    body = {"error": {"code": status, "message": message, "status": kind}}
    return status, _JSON, json.dumps(body).encode()
