"""Streamed answers of the fake: a reply body cut into each provider's server-sent events.

The shapes follow the recordings in ``tests/recordings``: Anthropic's ``message_start`` /
``content_block_delta`` / ``ping`` / ``message_delta`` events (usage split between the first and
the last), OpenAI's chunks ending with a ``choices: []`` usage chunk and ``data: [DONE]``
(``stream_options.include_usage``), and Gemini's ``alt=sse`` chunks with the usage in each chunk,
the finish reason and full counts in the last.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

#: Words per text chunk of a streamed fake answer.
WORDS_PER_CHUNK = 4


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    step = WORDS_PER_CHUNK
    pieces = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    return [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)] if text else []


def wants_stream(path: str, body: Mapping[str, Any]) -> bool:
    """True when a request asks for a streamed answer (``stream: true`` or Gemini's stream)."""
    return body.get("stream") is True or ":streamGenerateContent" in path


def streamed(provider: str, body: Mapping[str, Any]) -> bytes:
    """A whole reply body as one server-sent-event body (for routes that answer at once)."""
    return b"".join(stream_events(provider, body))


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def stream_events(provider: str, body: Mapping[str, Any]) -> list[bytes]:
    """The server-sent events streaming ``body`` (a whole reply of :func:`reply_body`)."""
    if provider == "anthropic":
        return _anthropic(body)
    if provider == "openai":
        return _openai(body)
    return _gemini(body)


def _anthropic(body: Mapping[str, Any]) -> list[bytes]:
    usage = dict(body["usage"])
    start_usage = usage | {"output_tokens": 1}
    message = {k: v for k, v in body.items() if k != "content"} | {
        "content": [],
        "stop_reason": None,
        "usage": start_usage,
    }
    events = [_sse({"type": "message_start", "message": message}, "message_start")]
    for index, block in enumerate(body["content"]):
        kind = block["type"]
        empty = {"type": kind, kind: ""} | ({"signature": ""} if kind == "thinking" else {})
        start = {"type": "content_block_start", "index": index, "content_block": empty}
        events.append(_sse(start, "content_block_start"))
        if index == 0:
            events.append(_sse({"type": "ping"}, "ping"))
        delta_type = "thinking_delta" if kind == "thinking" else "text_delta"
        for piece in _pieces(block[kind]):
            delta = {"type": "content_block_delta", "index": index}
            events.append(
                _sse(delta | {"delta": {"type": delta_type, kind: piece}}, "content_block_delta")
            )
        if kind == "thinking":
            sig = {"type": "signature_delta", "signature": block.get("signature", "")}
            events.append(_sse({"type": "content_block_delta", "index": index, "delta": sig}))
        events.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    stop = {"stop_reason": body["stop_reason"], "stop_sequence": None}
    final = {"type": "message_delta", "delta": stop, "usage": usage}
    events.append(_sse(final, "message_delta"))
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return events


def _openai(body: Mapping[str, Any]) -> list[bytes]:
    head = {k: body.get(k) for k in ("id", "created", "model")}
    head |= {"object": "chat.completion.chunk"}
    head |= {"service_tier": body["service_tier"]} if "service_tier" in body else {}
    choice = body["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        one = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _sse(head | {"choices": [one], "usage": None})

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if message.get("refusal"):
        events.append(chunk({"refusal": message["refusal"]}))
    thought = message.get("reasoning_content") or ""  # vLLM / DeepSeek / Ollama
    events += [chunk({"reasoning_content": piece}) for piece in _pieces(thought)]
    events += [chunk({"content": piece}) for piece in _pieces(message.get("content") or "")]
    events.append(chunk({}, choice["finish_reason"]))
    events.append(_sse(head | {"choices": [], "usage": body["usage"]}))
    events.append(b"data: [DONE]\n\n")
    return events


def _gemini(body: Mapping[str, Any]) -> list[bytes]:
    usage = dict(body.get("usageMetadata") or {})
    head = {k: body[k] for k in ("modelVersion", "responseId") if k in body}
    early_usage = {k: v for k, v in usage.items() if k != "candidatesTokenCount"}
    if "candidates" not in body:  # a blocked prompt: one chunk with the feedback
        return [_gemini_sse(dict(body))]
    candidate = body["candidates"][0]
    parts = (candidate.get("content") or {}).get("parts") or []
    pieces = [
        {"text": piece} | ({"thought": True} if part.get("thought") else {})
        for part in parts
        for piece in _pieces(part.get("text", ""))
    ]
    pieces = pieces or [{"text": ""}]
    events = []
    for i, part in enumerate(pieces):
        one: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
        if i < len(pieces) - 1:
            events.append(_gemini_sse(head | {"candidates": [one], "usageMetadata": early_usage}))
        else:  # the last chunk: the finish reason and the whole usage
            one["finishReason"] = candidate["finishReason"]
            events.append(_gemini_sse(head | {"candidates": [one], "usageMetadata": usage}))
    return events


def _gemini_sse(data: object) -> bytes:
    return f"data: {json.dumps(data)}\r\n\r\n".encode()


def aws_event_stream(events: list[bytes]) -> list[bytes]:
    """Anthropic's events as Bedrock's ``invoke-with-response-stream`` sends them.

    Each event's JSON travels base64-encoded as ``{"bytes": ...}`` in one AWS event-stream
    message (``application/vnd.amazon.eventstream``: a length-prefixed, CRC-checked binary frame
    with ``:event-type: chunk``), which the SDK decodes with botocore.
    """
    frames = []
    for event in events:
        data = next(line[6:] for line in event.decode().splitlines() if line.startswith("data: "))
        payload = json.dumps({"bytes": base64.b64encode(data.encode()).decode()}).encode()
        headers = {":event-type": "chunk", ":content-type": "application/json"}
        frames.append(_aws_frame(headers | {":message-type": "event"}, payload))
    return frames


def _aws_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    head = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        for k, v in headers.items()
    )
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message))
