"""The three providers' wire formats: request routing, reply bodies and error bodies."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from nyxnb.providers import structured
from nyxnb.testing.faults import PROVIDERS, Fault, Reply

# the Gemini API (/v1beta/models/M:...) and Vertex AI (/v1beta1/projects/P/locations/L/publishers/
# google/models/M:...)
_GEMINI_PATH = re.compile(
    r"^/[^/]+/(?:projects/[^/]+/locations/[^/]+/publishers/google/)?"
    r"models/(?P<model>[^/:]+):(?:stream)?[gG]enerateContent$"
)
# Claude on Bedrock (/model/M/invoke[-with-response-stream]) and on Vertex AI
# (.../publishers/anthropic/models/M:rawPredict or :streamRawPredict)
_CLAUDE_CLOUD_PATH = re.compile(
    r"^(?:/model/(?P<bedrock>[^/]+)/invoke(?:-with-response-stream)?"
    r"|(?:/[^/]+)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/"
    r"(?P<vertex>[^/:]+):(?:stream)?[rR]awPredict)$"
)


_STOPS = {  # normalised stop -> wire value
    "anthropic": {"end": "end_turn", "max_tokens": "max_tokens", "refusal": "refusal"},
    "openai": {"end": "stop", "max_tokens": "length", "blocked": "content_filter"},
    "google": {"end": "STOP", "max_tokens": "MAX_TOKENS", "refusal": "SAFETY"},
}
_TYPES = {  # status -> (Anthropic error.type, OpenAI error.type, Gemini error.status)
    400: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    401: ("authentication_error", "invalid_request_error", "UNAUTHENTICATED"),
    402: ("billing_error", "invalid_request_error", "FAILED_PRECONDITION"),
    403: ("permission_error", "invalid_request_error", "PERMISSION_DENIED"),
    404: ("not_found_error", "invalid_request_error", "NOT_FOUND"),
    409: ("conflict_error", "invalid_request_error", "ABORTED"),
    413: ("request_too_large", "invalid_request_error", "INVALID_ARGUMENT"),
    429: ("rate_limit_error", "requests", "RESOURCE_EXHAUSTED"),
    503: ("api_error", "server_error", "UNAVAILABLE"),
    504: ("timeout_error", "server_error", "DEADLINE_EXCEEDED"),
    529: ("overloaded_error", "server_error", "UNAVAILABLE"),
}


def _wire_type(provider: str, status: int) -> str:
    server = ("api_error", "server_error", "INTERNAL")
    default = server if status >= 500 else ("invalid_request_error", "invalid_request_error", "")
    return _TYPES.get(status, default)[PROVIDERS.index(provider)] or "UNKNOWN"


def fault_body(provider: str, fault: Fault) -> dict[str, Any]:
    """The JSON error body ``provider`` sends for ``fault``."""
    f = fault.for_provider(provider)
    etype = f.type or _wire_type(provider, f.status)
    if provider == "anthropic":
        return {"type": "error", "error": {"type": etype, "message": f.message}}
    if provider == "openai":
        return {"error": {"message": f.message, "type": etype, "param": None, "code": f.code}}
    error: dict[str, Any] = {"code": f.status, "message": f.message, "status": etype}
    if f.details:  # Gemini leaves ``details`` out when it has none (as recorded)
        error["details"] = list(f.details)
    return {"error": error}


def schema_of(provider: str, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON Schema a request asks its answer to match, in ``provider``'s wire format."""
    if provider == "openai":
        fmt = body.get("response_format") or {}
        return (
            (fmt.get("json_schema") or {}).get("schema")
            if fmt.get("type") == "json_schema"
            else None
        )
    if provider == "anthropic":
        fmt = (body.get("output_config") or {}).get("format") or {}
        return fmt.get("schema") if fmt.get("type") == "json_schema" else None
    config = body.get("generationConfig") or body.get("generation_config") or {}
    return config.get("responseJsonSchema") or config.get("response_json_schema")


def _text(provider: str, r: Reply, prompt: str, schema: Mapping[str, Any] | None) -> str:
    if r.text is not None:
        return r.text
    if schema is not None:  # structured output: valid JSON for the schema, or (told so) not JSON
        if r.invalid_json:
            return '{"answer": "cut sh'
        return json.dumps(structured.example_for(schema, f"{provider}:{prompt}"))
    return f"fake {provider} answer to: {prompt[:60]}"


def reply_body(
    provider: str,
    r: Reply,
    model: str,
    prompt: str,
    n: int,
    schema: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body ``provider`` sends for a successful reply ``r`` (``schema``: a structured
    request's schema, from :func:`schema_of`)."""
    text = _text(provider, r, prompt, schema)
    tokens_in = len(prompt.split()) + r.cached_tokens if r.input_tokens is None else r.input_tokens
    tokens_out = len(text.split()) if r.output_tokens is None else r.output_tokens
    usage = (tokens_in, tokens_out, r.cached_tokens, r.reasoning_tokens)
    raw = r.raw_stop or _STOPS[provider].get(r.stop, _STOPS[provider].get("refusal", "stop"))
    if provider == "anthropic":
        body = _anthropic_reply(text, raw, model, usage, n)
    elif provider == "openai":
        body = _openai_reply(text, raw, model, usage, n, refused=r.stop == "refusal")
    else:
        body = _gemini_reply(text, raw, model, usage, n, blocked=r.stop == "blocked")
    return with_thinking(provider, body, r.thinking)


def with_thinking(provider: str, body: dict[str, Any], thinking: str) -> dict[str, Any]:
    """A reply carrying ``thinking`` as its API does (Anthropic: the thinking block's text;
    OpenAI-compatible servers such as vLLM or Ollama: ``reasoning_content``; Gemini: a
    ``thought`` part, sent when the request asked for thoughts)."""
    if not thinking:
        return body
    if provider == "anthropic":
        for block in body["content"]:
            if block["type"] == "thinking":
                block["thinking"] = thinking
    elif provider == "openai":
        body["choices"][0]["message"]["reasoning_content"] = thinking
    elif body.get("candidates"):
        content = body["candidates"][0].setdefault("content", {"role": "model", "parts": []})
        content["parts"].insert(0, {"text": thinking, "thought": True})
    return body


_THOUGHT = "Let me think this through step by step before answering."


def _anthropic_reply(text: str, raw: str, model: str, usage: tuple[int, ...], n: int) -> dict:
    tokens_in, tokens_out, cached, reasoning = usage
    content = [{"type": "text", "text": text}] if text else []
    if reasoning:  # a thinking block first; its tokens are part of output_tokens
        thinking = {"type": "thinking", "thinking": _THOUGHT, "signature": f"EqQBfake{n}"}
        content.insert(0, thinking)
    return {
        "id": f"msg_fake_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": raw,
        "stop_sequence": None,
        "usage": {
            "input_tokens": tokens_in - cached,  # Anthropic counts cache reads separately
            "output_tokens": tokens_out + reasoning,
            **({"output_tokens_details": {"thinking_tokens": reasoning}} if reasoning else {}),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard",
        },
    }


def _openai_reply(
    text: str, raw: str, model: str, usage: tuple[int, ...], n: int, refused: bool
) -> dict:
    tokens_in, tokens_out, cached, reasoning = usage
    message = {"role": "assistant", "content": None if refused else text}
    message["refusal"] = text if refused else None
    return {
        "id": f"chatcmpl-fake{n}",
        "object": "chat.completion",
        "created": 1_700_000_000 + n,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": raw, "logprobs": None}],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out + reasoning,
            "total_tokens": tokens_in + tokens_out + reasoning,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
    }


def _gemini_reply(
    text: str, raw: str, model: str, usage: tuple[int, ...], n: int, blocked: bool
) -> dict:
    tokens_in, tokens_out, cached, reasoning = usage
    meta = {"promptTokenCount": tokens_in, "candidatesTokenCount": tokens_out}
    meta |= {"totalTokenCount": tokens_in + tokens_out + reasoning}
    meta |= {"cachedContentTokenCount": cached} if cached else {}
    meta |= {"thoughtsTokenCount": reasoning} if reasoning else {}
    body: dict[str, Any] = {"usageMetadata": meta, "modelVersion": model, "responseId": f"r{n}"}
    if blocked:
        return body | {"promptFeedback": {"blockReason": "SAFETY"}}
    candidate: dict[str, Any] = {"finishReason": raw, "index": 0}
    if text:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    return body | {"candidates": [candidate]}


def prompt_of(provider: str, body: Mapping[str, Any]) -> str:
    """The text of the last user message of a request body."""
    if provider == "google":
        turns = [c for c in body.get("contents", []) if c.get("role", "user") == "user"]
        parts = turns[-1].get("parts", []) if turns else []
        return " ".join(str(p.get("text", "")) for p in parts)
    turns = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = turns[-1].get("content", "") if turns else ""
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping))
    return str(content)


def route(path: str) -> tuple[str, str] | None:
    """``(provider, model)`` for a request path, or None if no fake API serves it."""
    path = path.split("?", 1)[0]
    if path.endswith("/v1/messages"):
        return "anthropic", ""
    if path.endswith("/chat/completions"):
        return "openai", ""
    match = _GEMINI_PATH.search(path)
    if match:
        return "google", match.group("model")
    match = _CLAUDE_CLOUD_PATH.search(path)
    if match:
        return "anthropic", unquote(match.group("bedrock") or match.group("vertex"))
    return None


#: What each fake provider's list-models API answers (``FakeProviderServer.models``).
DEFAULT_MODELS = {
    "anthropic": ("claude-haiku-4-5", "claude-sonnet-4-5"),
    "openai": ("gpt-4o-mini", "gpt-5-mini"),
    "google": ("gemini-2.5-flash", "gemini-2.5-pro"),
}


def models_provider(path: str, headers: Mapping[str, str]) -> str | None:
    """Which provider a ``GET .../models`` is for (the three share ``/v1/models``)."""
    if not path.split("?", 1)[0].endswith("/models"):
        return None
    if "anthropic-version" in headers:
        return "anthropic"
    if "x-goog-api-key" in headers or "/v1beta" in path:
        return "google"
    return "openai"


def models_body(provider: str, models: tuple[str, ...]) -> dict[str, Any]:
    """A list-models answer in ``provider``'s wire format."""
    data: list[dict[str, object]]
    if provider == "anthropic":
        data = [
            {"id": m, "type": "model", "display_name": m, "created_at": "2025-10-01T00:00:00Z"}
            for m in models
        ]
        first, last = (models[0], models[-1]) if models else (None, None)
        return {"data": data, "has_more": False, "first_id": first, "last_id": last}
    if provider == "openai":
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
            for m in models
        ]
        return {"object": "list", "data": data}
    return {"models": [{"name": f"models/{m}", "displayName": m} for m in models]}


def request_tokens(provider: str, body: Mapping[str, Any]) -> int:
    """The input tokens the fake counts for a request: words of every message and the system."""
    if provider == "google":
        texts = [
            str(p.get("text", "")) for c in body.get("contents", []) for p in c.get("parts", [])
        ]
        system = body.get("systemInstruction") or {}
        texts += [str(p.get("text", "")) for p in system.get("parts", [])]
    else:
        texts = [str(m.get("content", "")) for m in body.get("messages", [])]
        texts.append(str(body.get("system", "")))
    return sum(len(t.split()) for t in texts)
