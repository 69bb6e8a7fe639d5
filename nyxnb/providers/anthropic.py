"""``anthropic``: Claude through the official ``anthropic`` SDK (``AsyncAnthropic``, Messages API).

The key comes from ``ANTHROPIC_API_KEY`` and the endpoint from ``ANTHROPIC_BASE_URL`` (read by the
SDK).  SDK retries are off: the fallback chain owns retries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import anthropic
from anthropic.types import Message as SdkMessage

from nyxnb.errors import ProviderError
from nyxnb.providers import structured
from nyxnb.providers.base import (
    STOP_END,
    STOP_MAX_TOKENS,
    STOP_REFUSAL,
    Completion,
    CompletionRequest,
    Provider,
    ProviderOptions,
)
from nyxnb.providers.classify import (
    HttpFailure,
    cut_error,
    malformed_answer,
    rate_info,
    sdk_error,
    transport_error,
)
from nyxnb.providers.endpoints import anthropic_client
from nyxnb.providers.params import anthropic_params, anthropic_thinking_tokens, anthropic_thoughts
from nyxnb.providers.streaming import StreamCut, Watch
from nyxnb.rates import RateInfo

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

    @cached_property
    def stream_timeout(self) -> anthropic.Timeout:
        """The SDK timeout of a streamed call (the options are frozen: made once)."""
        timeout: anthropic.Timeout = self.options.http_timeout(anthropic.Timeout, streamed=True)
        return timeout

    async def complete(self, request: CompletionRequest) -> Completion:
        """Stream one Messages API request and normalise the answer."""
        client = self.client()
        model = self.model_for(request)
        watch = self.watch(request)
        timeout = self.stream_timeout
        answer = _Answer(watch)
        add = answer.add
        try:
            async with watch:
                params = self.params(request)
                stream = await client.messages.create(**params, stream=True, timeout=timeout)
                watch.opened()
                rate = rate_info(stream.response.headers)
                async for event in stream:
                    add(event)
        except Exception as exc:
            raise self._error(exc, getattr(client, "api_key", None)) from exc
        try:
            return answer.completion(model, self.name, rate)
        except Exception as exc:  # noqa: BLE001 - a 200 that is not a message stream
            raise malformed_answer(self.name, exc, getattr(client, "api_key", None)) from exc

    def _error(self, exc: Exception, key: str | None) -> ProviderError:
        """The nyxnb error for an SDK, transport or timeout exception."""
        if isinstance(exc, StreamCut):
            return cut_error(self.name, exc, key)
        failure = failure_of(exc) if isinstance(exc, anthropic.APIStatusError) else None
        if failure is None and not isinstance(exc, anthropic.AnthropicError):
            return transport_error(self.name, exc, key) or malformed_answer(self.name, exc, key)
        return sdk_error(self.name, anthropic, exc, failure, key)


class _Answer:
    """A streamed message, accumulated from its events (the same fields as a whole message).

    :meth:`add` runs once per event: a text delta costs one append and one :meth:`Watch.wrote`
    (which also marks the stream alive); any other event marks it alive with :meth:`Watch.tick`.
    """

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.started: Any = None  # message_start's message: id, model, input usage
        self.text: list[str] = []
        self.stop = ""
        self.output_tokens = 0
        self.late_usage: Any = None
        self.thinking: list[str] = []
        self._wrote = watch.wrote
        self._append = self.text.append
        watch.counted = self.counted

    def add(self, event: Any) -> None:
        """Take one stream event."""
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                text = delta.text
                self._append(text)
                self._wrote(text)
                return
            if delta.type == "thinking_delta":
                self.thinking.append(delta.thinking)
                self._wrote(delta.thinking)
                return
        self.watch.tick()
        if kind == "message_start":
            self.started = event.message
            self.output_tokens = event.message.usage.output_tokens or 0
        elif kind == "message_delta":
            self.stop = event.delta.stop_reason or self.stop
            self.output_tokens = event.usage.output_tokens or self.output_tokens
            self.late_usage = event.usage

    def counted(self) -> tuple[int | None, int | None]:
        """Input tokens once ``message_start`` came (cache reads and writes included); output
        tokens once ``message_delta`` did (its count is cumulative; the start's is not)."""
        usage = self.started.usage if self.started is not None else None
        if usage is None:
            return None, None
        fed = [usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens]
        out = self.late_usage.output_tokens if self.late_usage is not None else None
        return sum(n or 0 for n in fed), out

    def completion(self, model: str, provider: str, rate: RateInfo | None = None) -> Completion:
        if self.started is None:
            raise ValueError("the stream had no message_start event")
        usage, late = self.started.usage, self.late_usage
        tokens = _Usage(
            input=_latest(late, usage, "input_tokens"),
            cached=_latest(late, usage, "cache_read_input_tokens"),
            written=_latest(late, usage, "cache_creation_input_tokens"),
            output=self.output_tokens,
        )
        answer = _completion("".join(self.text), self.stop, tokens, self.started, model, provider)
        thought = "".join(self.thinking)
        reasoning = anthropic_thinking_tokens(late or usage, thought)
        tier = getattr(late, "service_tier", None) or getattr(usage, "service_tier", None)
        return replace(
            answer, reasoning_tokens=reasoning, thinking=thought, service_tier=tier, rate=rate
        )


def _latest(late: Any, early: Any, name: str) -> int:
    """A usage count from ``message_delta`` when it carries one, else from ``message_start``."""
    value = getattr(late, name, None) if late is not None else None
    return int(value if value is not None else getattr(early, name, None) or 0)


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
    out = anthropic_params(request, params)
    structured.anthropic_params(out, request.output_schema)  # data: output_schema
    return out


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


@dataclass(frozen=True)
class _Usage:
    input: int
    cached: int
    written: int
    output: int


def completion_of(message: SdkMessage, model: str, provider: str) -> Completion:
    """The normalised answer of a Messages API message (from a batch)."""
    text = "".join(getattr(b, "text", "") for b in message.content if b.type == "text")
    usage = message.usage
    tokens = _Usage(
        input=usage.input_tokens,
        cached=usage.cache_read_input_tokens or 0,
        written=usage.cache_creation_input_tokens or 0,
        output=usage.output_tokens,
    )
    answer = _completion(text, message.stop_reason or "", tokens, message, model, provider)
    thought = anthropic_thoughts(message.content)
    reasoning = anthropic_thinking_tokens(usage, thought)
    return replace(answer, reasoning_tokens=reasoning, thinking=thought)


def _completion(
    text: str, raw: str, usage: _Usage, message: Any, model: str, provider: str
) -> Completion:
    """One normalised answer, streamed or whole: input counts cache reads and writes."""
    return Completion(
        text=text,
        stop_reason=_STOPS.get(raw, STOP_END),
        input_tokens=usage.input + usage.cached + usage.written,
        output_tokens=usage.output,
        model=model,
        provider=provider,
        cached_input_tokens=usage.cached,
        cache_write_tokens=usage.written,
        raw_stop_reason=raw,
        extra={
            "id": message.id,
            "served_model": message.model,
            "cache_creation_input_tokens": usage.written,
        },
    )
