"""``anthropic``: Claude through the official ``anthropic`` SDK (``AsyncAnthropic``, Messages API).

The key comes from ``ANTHROPIC_API_KEY`` and the endpoint from ``ANTHROPIC_BASE_URL`` (read by the
SDK).  SDK retries are off: the fallback chain owns retries.
"""

from __future__ import annotations

import inspect
from typing import Any

import anthropic
from anthropic.types import Message as SdkMessage

from nyxnb.errors import ProviderError
from nyxnb.providers.base import (
    STOP_END,
    STOP_MAX_TOKENS,
    STOP_REFUSAL,
    Completion,
    CompletionRequest,
    Provider,
    ProviderOptions,
)
from nyxnb.providers.classify import HttpFailure, malformed_answer, rate_info, sdk_error
from nyxnb.providers.endpoints import anthropic_client
from nyxnb.providers.params import anthropic_params, anthropic_thinking

_STOPS = {
    "max_tokens": STOP_MAX_TOKENS,
    "model_context_window_exceeded": STOP_MAX_TOKENS,
    "refusal": STOP_REFUSAL,
}


class AnthropicOptions(ProviderOptions):
    """``prompt_cache`` marks the persona's system prompt and a fan-out's shared prefix."""

    prompt_cache: bool = True


class AnthropicProvider(Provider):
    """Claude models over ``AsyncAnthropic``."""

    name = "anthropic"
    key_env = ("ANTHROPIC_API_KEY",)
    default_model = "claude-haiku-4-5"
    Options = AnthropicOptions

    def params(self, request: CompletionRequest) -> dict[str, Any]:
        """Messages API parameters of a request, cache marks as the options say."""
        opts: AnthropicOptions = self.options  # type: ignore[assignment]
        return params_for(request, self.model_for(request), cache=opts.prompt_cache)

    def make_client(self) -> anthropic.AsyncAnthropic:
        """The endpoint's SDK client (API, Bedrock or Vertex); its own retries are off."""
        client: anthropic.AsyncAnthropic = anthropic_client(
            self, self.options.http_timeout(anthropic.Timeout)
        )
        return client

    async def complete(self, request: CompletionRequest) -> Completion:
        """Send one Messages API request and normalise the answer."""
        client = self.client()
        model = self.model_for(request)
        try:
            raw = await client.messages.with_raw_response.create(**self.params(request))
        except anthropic.AnthropicError as exc:
            raise self._error(exc, getattr(client, "api_key", None)) from exc
        try:
            answer = completion_of(await _parsed(raw), model, self.name)
        except Exception as exc:  # noqa: BLE001 - a 200 that is not a message
            raise malformed_answer(self.name, exc, getattr(client, "api_key", None)) from exc
        answer.extra["rate"] = rate_info(raw.headers)
        return answer

    def _error(self, exc: Exception, key: str | None) -> ProviderError:
        """The nyxnb error for an SDK exception."""
        failure = failure_of(exc) if isinstance(exc, anthropic.APIStatusError) else None
        return sdk_error(self.name, anthropic, exc, failure, key)


_EPHEMERAL = {"type": "ephemeral"}


def _content(
    request: CompletionRequest, i: int, text: str, cache: bool
) -> str | list[dict[str, Any]]:
    """A message's content; the fan-out's shared prefix is its own block, marked cacheable."""
    cut = request.shared_prefix if i == 0 and cache else 0
    if not 0 < cut < len(text):
        return text
    return [
        {"type": "text", "text": text[:cut], "cache_control": _EPHEMERAL},
        {"type": "text", "text": text[cut:]},
    ]


def params_for(request: CompletionRequest, model: str, cache: bool = True) -> dict[str, Any]:
    """Messages API parameters; the persona's system prompt and shared prefix are cacheable."""
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": [
            {"role": m.role, "content": _content(request, i, m.content, cache)}
            for i, m in enumerate(request.messages)
        ],
    }
    if request.system:
        block: dict[str, Any] = {"type": "text", "text": request.system}
        params["system"] = [block | {"cache_control": _EPHEMERAL}] if cache else [block]
    return anthropic_params(request, params)


def failure_of(exc: anthropic.APIStatusError) -> HttpFailure:
    """The classification input of an SDK status error."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    message = exc.api_message or str(error.get("message") or "") or exc.message
    return HttpFailure(
        status=exc.status_code,
        message=message,
        error_type=str(exc.type or error.get("type") or ""),
        code=exc.error_code or "",
        headers=dict(exc.response.headers),
    )


def completion_of(message: SdkMessage, model: str, provider: str) -> Completion:
    """The normalised answer of a Messages API message (live or from a batch)."""
    text = "".join(getattr(b, "text", "") for b in message.content if b.type == "text")
    usage = message.usage
    cached = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    raw = message.stop_reason or ""
    reasoning, thinking = anthropic_thinking(message, text)
    return Completion(
        text=text,
        stop_reason=_STOPS.get(raw, STOP_END),
        input_tokens=usage.input_tokens + cached + written,
        output_tokens=usage.output_tokens,
        model=model,
        provider=provider,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        raw_stop_reason=raw,
        reasoning_tokens=reasoning,
        thinking=thinking,
        service_tier=getattr(usage, "service_tier", None),
        extra={
            "id": message.id,
            "served_model": message.model,
            "cache_creation_input_tokens": written,
        },
    )


async def _parsed(raw: Any) -> Any:
    """The parsed body of a raw response (the SDK's ``parse`` is sync or async by version)."""
    parsed = raw.parse()
    return await parsed if inspect.isawaitable(parsed) else parsed
