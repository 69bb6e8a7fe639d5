"""The fake's OpenAI Files + Batches API and OpenAI's automatic prompt caching.

:class:`FakeOpenAIBatches` is transport-free like the Anthropic fake: ``handle(method, path,
headers, body)`` answers ``POST /v1/files`` (multipart), ``GET /v1/files/{id}[/content]``,
``POST /v1/batches``, ``GET /v1/batches[/{id}]`` and ``POST /v1/batches/{id}/cancel``, or
returns None.  An input file is checked as OpenAI does (purpose ``batch``, one JSON line per
request with a unique ``custom_id``, ``method`` POST and the batch's ``url``); a bad one fails
the batch with ``errors``.  A batch is ``validating`` when created, ``in_progress`` until
``delay_s`` has passed, then ``completed`` (``expired`` if a planned line expired); a cancel
answers ``cancelling``, then ``cancelled``.  Answered lines go to the output file, failed ones to
the error file; expired and canceled requests get the ``batch_expired`` / ``batch_cancelled``
error lines OpenAI writes (``expired_lines = False``: no line at all).

Caching is automatic, as OpenAI's: a prompt of at least ``min_cache_tokens`` words reports as
``prompt_tokens_details.cached_tokens`` the longest prefix, in steps of 128 words from the
minimum, that an earlier request (live or batched) already sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Mapping
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from nyxnb.testing.batchbook import BatchBook, FakeBatch, Response, text_of
from nyxnb.testing.faults import Reply
from nyxnb.testing.wire import prompt_of, reply_body, schema_of

FILES = re.compile(r"^/v1/files(?:/(?P<id>[^/]+)(?P<content>/content)?)?$")
BATCHES = re.compile(r"^/v1/batches(?:/(?P<id>[^/]+)(?P<cancel>/cancel)?)?$")
#: OpenAI caches prompt prefixes in steps of this many tokens above the minimum.
CACHE_STEP = 128
_JSON = {"Content-Type": "application/json"}
_EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
_CANCELED = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}


class FakeOpenAIBatches(BatchBook):
    """OpenAI Files + Batches and automatic prompt caching, transport-free."""

    id_prefix = "batch_fake"

    def __init__(self, delay_s: float = 0.0, min_cache_tokens: int = 1024) -> None:
        super().__init__(delay_s, min_cache_tokens)
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.expired_lines = True
        self._prefixes: set[str] = set()
        self._cancel_seen: set[str] = set()
        self._results: dict[str, tuple[str | None, str | None]] = {}
        self._errors: dict[str, list[dict[str, Any]]] = {}
        self._inputs: dict[str, tuple[str, str]] = {}  # batch id -> (endpoint, input file id)

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response | None:
        """Answer a Files or Batches request, or None if ``path`` is neither."""
        path, _, query = path.partition("?")
        files, batches = FILES.match(path), BATCHES.match(path)
        if files is None and batches is None:
            return None
        with self._lock:
            self.calls.append((method, path))
            if files is not None:
                return self._file_route(method, files, headers, body)
            assert batches is not None
            return self._batch_route(method, batches, query, body)

    # -- prompt caching ------------------------------------------------------------------------
    def completion(self, body: Mapping[str, Any], n: int) -> dict[str, Any]:
        """A chat completion for ``body``, its usage counting automatic prefix-cache hits."""
        tokens = " ".join(text_of(m.get("content")) for m in body.get("messages", [])).split()
        cached = self._cache(tokens)
        reply = Reply(input_tokens=len(tokens), cached_tokens=cached)
        model = str(body.get("model", ""))
        return reply_body(
            "openai", reply, model, prompt_of("openai", body), n, schema_of("openai", body)
        )

    def _cache(self, tokens: list[str]) -> int:
        """The cached prefix length of a prompt; remembers its prefixes for later requests."""
        cuts = range(self.min_cache_tokens, len(tokens) + 1, CACHE_STEP)
        keys = [hashlib.sha256(" ".join(tokens[:k]).encode()).hexdigest() for k in cuts]
        hits = [k for k, key in zip(cuts, keys, strict=True) if key in self._prefixes]
        self._prefixes.update(keys)
        return max(hits, default=0)

    # -- files ---------------------------------------------------------------------------------
    def _file_route(
        self, method: str, match: re.Match[str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        file_id = match["id"]
        if method == "POST" and file_id is None:
            return self._upload(headers, body)
        if method != "GET" or file_id not in self.files:
            return _error(404, f"No such File object: {file_id}")
        if match["content"]:
            return 200, {"Content-Type": "application/octet-stream"}, self.contents[file_id]
        return _ok(self.files[file_id])

    def _upload(self, headers: Mapping[str, str], body: bytes) -> Response:
        form = _multipart(headers.get("content-type", ""), body)
        purpose, upload = form.get("purpose"), form.get("file")
        if upload is None or purpose is None:
            return _error(400, "'file' and 'purpose' are required", param="file")
        name = upload.get_filename() or "upload.jsonl"
        data = upload.get_payload(decode=True)
        return _ok(self._keep_file(name, data if isinstance(data, bytes) else b"", _str(purpose)))

    def _keep_file(self, name: str, data: bytes, purpose: str) -> dict[str, Any]:
        file_id = f"file-fake{len(self.files) + 1:04d}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }
        self.contents[file_id] = data
        return self.files[file_id]

    # -- batches -------------------------------------------------------------------------------
    def _batch_route(self, method: str, match: re.Match[str], query: str, body: bytes) -> Response:
        batch_id = match["id"]
        if batch_id is None:
            return self._create(_json(body)) if method == "POST" else self._list(query)
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(404, f"No batch found with id '{batch_id}'.")
        if match["cancel"] and method == "POST":
            batch.canceled = True
            return _ok(self._view(batch))
        batch.retrieved += 1
        return _ok(self._view(batch))

    def _create(self, body: Mapping[str, Any]) -> Response:
        file_id = str(body.get("input_file_id", ""))
        if file_id not in self.files:
            return _error(400, f"No such File object: {file_id}", param="input_file_id")
        endpoint = str(body.get("endpoint", ""))
        lines, errors = _read_input(self.contents[file_id], endpoint)
        if self.files[file_id]["purpose"] != "batch":
            errors.append({"code": "invalid_purpose", "message": "file purpose must be 'batch'"})
        batch = self._new(lines, metadata=dict(body.get("metadata") or {}))
        self._errors[batch.id], self._inputs[batch.id] = errors, (endpoint, file_id)
        return _ok(self._view(batch))

    def _list(self, query: str) -> Response:
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        newest = list(reversed(self.batches.values()))
        ids = [b.id for b in newest]
        start = ids.index(params["after"]) + 1 if params.get("after") in ids else 0
        page = newest[start : start + int(params.get("limit") or 20)]
        data = [self._view(b) for b in page]
        more = start + len(page) < len(newest)
        return _ok(
            {
                "object": "list",
                "data": data,
                "has_more": more,
                "first_id": ids[start] if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    def _status(self, batch: FakeBatch) -> str:
        if self._errors.get(batch.id):
            return "failed"
        if batch.canceled:
            seen = batch.id in self._cancel_seen
            self._cancel_seen.add(batch.id)
            return "cancelled" if seen else "cancelling"
        if not self._ended(batch):
            return "validating" if batch.retrieved == 0 else "in_progress"
        planned = any(self._outcome(batch, i) == "expired" for i in range(len(batch.requests)))
        return "expired" if planned else "completed"

    def _view(self, batch: FakeBatch) -> dict[str, Any]:
        status = self._status(batch)
        ended = status in ("completed", "expired", "cancelled", "failed")
        answered = ended and status != "failed"
        out, err = self._files_of(batch) if answered else (None, None)
        outcomes = [self._outcome(batch, i) for i in range(len(batch.requests))] if answered else []
        counts = {
            "total": len(batch.requests),
            "completed": outcomes.count("succeeded"),
            "failed": outcomes.count("errored"),
        }
        errors, (endpoint, input_file) = self._errors.get(batch.id), self._inputs[batch.id]
        stamp = int(batch.created)
        view = {
            "id": batch.id,
            "object": "batch",
            "endpoint": endpoint,
            "input_file_id": input_file,
            "completion_window": "24h",
            "status": status,
            "created_at": stamp,
            "expires_at": stamp + 86_400,
            "output_file_id": out,
            "error_file_id": err,
            "request_counts": counts,
            "metadata": batch.metadata or None,
            "errors": {"object": "list", "data": errors} if errors else None,
        }
        return view | ({f"{status}_at": int(time.time())} if ended else {})

    def _files_of(self, batch: FakeBatch) -> tuple[str | None, str | None]:
        """The output and error files, written once when the batch ends."""
        if batch.id not in self._results:
            good: list[dict[str, Any]] = []
            bad: list[dict[str, Any]] = []
            for i, req in enumerate(batch.requests):
                line = self._line(batch, i, req)
                if line is not None:
                    (good if line["response"] and line["error"] is None else bad).append(line)
            self._results[batch.id] = (
                self._jsonl(batch, "output", good),
                self._jsonl(batch, "error", bad),
            )
        return self._results[batch.id]

    def _jsonl(self, batch: FakeBatch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        data = "\n".join(json.dumps(line) for line in lines).encode() + b"\n"
        return str(self._keep_file(f"{batch.id}_{kind}.jsonl", data, "batch_output")["id"])

    def _line(self, batch: FakeBatch, i: int, req: Mapping[str, Any]) -> dict[str, Any] | None:
        outcome = self._outcome(batch, i)
        line: dict[str, Any] = {
            "id": f"batch_req_{batch.id}_{i}",
            "custom_id": req["custom_id"],
            "response": None,
            "error": None,
        }
        if outcome == "succeeded":
            body = self.completion(req["body"], i)
            line["response"] = {"status_code": 200, "request_id": f"req_{i}", "body": body}
        elif outcome == "errored":
            error = {
                "message": self.line_error,
                "type": "server_error",
                "param": None,
                "code": None,
            }
            line["response"] = {
                "status_code": 500,
                "request_id": f"req_{i}",
                "body": {"error": error},
            }
        elif not self.expired_lines:
            return None
        else:
            line["error"] = _EXPIRED if outcome == "expired" else _CANCELED
        return line


def _read_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The request lines of an input file and what is wrong with them (OpenAI's checks)."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(data.decode().splitlines(), 1):
        if not raw.strip():
            continue
        line = _json(raw.encode())
        problem = _problem(line, seen, endpoint)
        if problem:
            errors.append({"code": "invalid_request", "message": problem, "line": n})
        seen.add(str(line.get("custom_id")))
        lines.append(line)
    return lines, errors


def _problem(line: Mapping[str, Any], seen: set[str], endpoint: str) -> str:
    """Why OpenAI would reject an input line ("" if it would not)."""
    if not line.get("custom_id"):
        return "custom_id is missing"
    if line["custom_id"] in seen:
        return f"custom_id {line['custom_id']!r} is duplicated"
    if line.get("method") != "POST":
        return "method must be POST"
    if line.get("url") != endpoint:
        return f"url must be the batch's endpoint {endpoint}"
    return "" if isinstance(line.get("body"), dict) else "body is missing"


def _multipart(content_type: str, body: bytes) -> dict[str, Message]:
    """The parts of a ``multipart/form-data`` body, by field name."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    parts: dict[str, Message] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name:
            parts[str(name)] = part
    return parts


def _str(part: Message) -> str:
    payload = part.get_payload(decode=True)
    return payload.decode() if isinstance(payload, bytes) else str(payload or "")


def _json(raw: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        value = json.loads(raw or b"{}")
        if isinstance(value, dict):
            return value
    return {}


def _ok(body: object) -> Response:
    return 200, _JSON, json.dumps(body).encode()


def _error(status: int, message: str, param: str | None = None) -> Response:
    code = "not_found" if status == 404 else None
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return status, _JSON, json.dumps(body).encode()
