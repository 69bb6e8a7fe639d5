"""``google``: Gemini through the official ``google-genai`` SDK (``genai.Client(...).aio``).

The key comes from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``; the SDK reads the endpoint from
``GOOGLE_GEMINI_BASE_URL`` itself (and calls ``/v1/models/{model}:generateContent`` by default).
google-genai does not retry unless given ``HttpRetryOptions``, so none are given: the fallback
chain owns retries.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import Any, TypeVar

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from nyxnb.errors import ProviderError
from nyxnb.providers.base import (
    STOP_END,
    STOP_MAX_TOKENS,
    STOP_REFUSAL,
    Completion,
    CompletionRequest,
    Provider,
)
from nyxnb.providers.classify import (
    CONNECTION,
    TIMEOUT,
    HttpFailure,
    http_error,
    make_error,
    malformed_answer,
)
from nyxnb.providers.endpoints import google_client
from nyxnb.providers.params import google_config, google_thoughts

_REFUSALS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)
_NORMAL = frozenset({"", "STOP", "FINISH_REASON_UNSPECIFIED"})
T = TypeVar("T")


class GoogleProvider(Provider):
    """Gemini models over ``google.genai.Client(...).aio``."""

    name = "google"
    key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    default_model = "gemini-2.5-flash"

    _key = ""

    def make_client(self) -> genai.Client:
        """The SDK client (google-genai does not retry unless told to; its timeout is in ms)."""
        timeout_ms = max(1, round(self.options.timeout_s * 1000))
        self._key = self.api_key() if self.key_env else ""
        client: genai.Client = google_client(self, types.HttpOptions(timeout=timeout_ms))
        return client

    async def complete(self, request: CompletionRequest) -> Completion:
        """Send one generateContent request and normalise the answer."""
        model = self.model_for(request)
        response = await self.sdk_call(
            lambda client: client.aio.models.generate_content(
                model=model, contents=contents_of(request), config=config_of(request)
            )
        )
        return completion_of(response, model, self.name)

    async def sdk_call(self, call: Callable[[genai.Client], Awaitable[T]]) -> T:
        """Await one SDK call on the client, its failures as nyxnb errors (live and batch)."""
        client: genai.Client = self.client()
        try:
            return await call(client)
        except Exception as exc:
            error = self._error(exc, self._key)
            if error is None:
                raise
            raise error from exc

    def _error(self, exc: BaseException, key: str) -> ProviderError | None:
        """The nyxnb error for an SDK or transport exception (None: not a provider failure)."""
        if isinstance(exc, genai_errors.ContinuationInterruptedError) and exc.__cause__:
            exc = exc.__cause__
        if isinstance(exc, genai_errors.APIError):
            return http_error(self.name, _failure(exc), secret=key)
        timeouts, connections = _transport_errors()
        if isinstance(exc, timeouts):
            return make_error(self.name, TIMEOUT, str(exc) or "request timed out", secret=key)
        if isinstance(exc, connections):
            return make_error(self.name, CONNECTION, str(exc) or "connection failed", secret=key)
        if isinstance(exc, ValueError):  # a 200 whose body is not JSON (an HTML page, cut short)
            return malformed_answer(self.name, exc, key)
        return None

    async def close_client(self, client: genai.Client) -> None:
        """Close the SDK client's connection pools."""
        await client.aio.aclose()
        client.close()


def contents_of(request: CompletionRequest) -> list[types.Content]:
    """The ``contents`` of a request (live or in a batch)."""
    return [
        types.Content(
            role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)]
        )
        for m in request.messages
    ]


def config_of(request: CompletionRequest) -> types.GenerateContentConfig:
    """The generation config of a request: system prompt, token limit, temperature."""
    return types.GenerateContentConfig(
        system_instruction=request.system or None,
        max_output_tokens=request.max_tokens,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        **google_config(request),
    )


@cache
def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeout, connection) exception types of whichever HTTP stack google-genai uses."""
    timeouts: list[type[BaseException]] = [TimeoutError]
    connections: list[type[BaseException]] = [ConnectionError]
    for module, timeout_name, transport_name in (
        ("httpx2", "TimeoutException", "TransportError"),
        ("httpx", "TimeoutException", "TransportError"),
        ("aiohttp", "ServerTimeoutError", "ClientConnectionError"),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        timeouts.append(getattr(mod, timeout_name))
        connections.append(getattr(mod, transport_name))
    return tuple(timeouts), tuple(connections)


def _failure(exc: genai_errors.APIError) -> HttpFailure:
    body = exc.details if isinstance(exc.details, Mapping) else {}
    error = body.get("error", body)
    error = error if isinstance(error, Mapping) else {}
    details = [d for d in error.get("details") or [] if isinstance(d, Mapping)]
    reason = next((str(d.get("reason")) for d in details if d.get("reason")), "")
    headers = getattr(exc.response, "headers", None) or {}
    return HttpFailure(
        status=int(exc.code or 0),
        message=str(exc.message or ""),
        error_type=str(exc.status or ""),
        code=reason,
        headers=dict(headers),
        details=details,
    )


def _finish(response: types.GenerateContentResponse) -> tuple[str, str, str]:
    """(text, normalised stop reason, raw finish reason)."""
    candidate = response.candidates[0] if response.candidates else None
    if candidate is None:
        feedback = response.prompt_feedback
        reason = feedback.block_reason if feedback and feedback.block_reason else None
        return "", STOP_REFUSAL, f"BLOCKED:{_enum(reason)}" if reason else "NO_CANDIDATES"
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    raw = _enum(candidate.finish_reason)
    if raw in _NORMAL:
        stop = STOP_END
    elif raw == "MAX_TOKENS":
        stop = STOP_MAX_TOKENS
    elif raw in _REFUSALS or not text:
        stop = STOP_REFUSAL  # blocked, or an unusable finish (OTHER, MALFORMED_...) with no text
    else:
        stop = STOP_END
    return text, stop, raw


def _enum(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def completion_of(response: types.GenerateContentResponse, model: str, provider: str) -> Completion:
    """The normalised answer of a generateContent response (live or from a batch)."""
    text, stop, raw = _finish(response)
    usage = response.usage_metadata
    output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0) if usage else 0
    reasoning, thinking, tier = google_thoughts(response)
    return Completion(
        text=text,
        stop_reason=stop,
        input_tokens=(usage.prompt_token_count or 0) if usage else 0,
        output_tokens=output,
        model=model,
        provider=provider,
        cached_input_tokens=(usage.cached_content_token_count or 0) if usage else 0,
        raw_stop_reason=raw,
        reasoning_tokens=reasoning,
        thinking=thinking,
        service_tier=tier,
        extra={"id": response.response_id, "served_model": response.model_version},
    )
