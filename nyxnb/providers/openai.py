"""``openai``: OpenAI (or any OpenAI-compatible server) through the official ``openai`` SDK.

Uses ``AsyncOpenAI`` Chat Completions.  The key comes from ``OPENAI_API_KEY`` and the endpoint from
``OPENAI_BASE_URL`` (read by the SDK; include ``/v1``), which also reaches local servers such as
Ollama, vLLM or llama.cpp.  SDK retries are off: the fallback chain owns retries.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion

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
from nyxnb.providers.endpoints import openai_client
from nyxnb.providers.params import openai_params
from nyxnb.providers.streaming import StreamCut, Watch

_STOPS = {"length": STOP_MAX_TOKENS, "content_filter": STOP_REFUSAL}


class OpenAIOptions(ProviderOptions):
    """``max_tokens_param``: ``max_tokens`` for servers that predate ``max_completion_tokens``."""

    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"


class OpenAIProvider(Provider):
    """OpenAI chat models over ``AsyncOpenAI``."""

    name = "openai"
    key_env = ("OPENAI_API_KEY",)
    default_model = "gpt-4o-mini"
    Options = OpenAIOptions

    def params(self, request: CompletionRequest) -> dict[str, Any]:
        """Chat Completions parameters of a request (live, or a batch line's ``body``)."""
        opts: OpenAIOptions = self.options  # type: ignore[assignment]
        spec = self.endpoint.spec if self.endpoint is not None else None
        param = (spec.max_tokens_param if spec else None) or opts.max_tokens_param
        return _params(request, self.model_for(request), param)

    def make_client(self) -> openai.AsyncOpenAI:
        """The endpoint's SDK client; its own retries are off (the fallback chain owns retries)."""
        client: openai.AsyncOpenAI = openai_client(self, self.options.http_timeout(openai.Timeout))
        return client

    async def complete(self, request: CompletionRequest) -> Completion:
        """Stream one Chat Completions request (usage in its last chunk) and normalise it."""
        client = self.client()
        model = self.model_for(request)
        watch = self.watch(request)
        timeout = self.options.http_timeout(openai.Timeout, streamed=True)
        answer = _Answer(watch)
        try:
            async with watch:
                params = self.params(request) | _STREAMED
                stream = await client.chat.completions.create(**params, timeout=timeout)
                watch.opened()
                rate = rate_info(stream.response.headers)
                async for chunk in stream:
                    answer.add(chunk)
        except Exception as exc:
            raise self._error(exc, client.api_key) from exc
        try:
            return replace(answer.completion(model, self.name), rate=rate)
        except Exception as exc:  # noqa: BLE001 - a 200 that is not a chunk stream
            raise malformed_answer(self.name, exc, client.api_key) from exc

    def _error(self, exc: Exception, key: str | None) -> ProviderError:
        """The nyxnb error for an SDK, transport or timeout exception."""
        if isinstance(exc, StreamCut):
            return cut_error(self.name, exc, key)
        failure = _failure(exc) if isinstance(exc, openai.APIStatusError) else None
        if failure is None and not isinstance(exc, openai.OpenAIError):
            return transport_error(self.name, exc, key) or malformed_answer(self.name, exc, key)
        return sdk_error(self.name, openai, exc, failure, key)


_STREAMED = {"stream": True, "stream_options": {"include_usage": True}}


class _Answer:
    """A streamed chat completion, accumulated from its chunks."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.first: Any = None  # the first chunk: id and served model
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.finish = ""
        self.choices = False
        self.usage: Any = None
        self.thinking: list[str] = []  # reasoning_content of OpenAI-compatible servers
        self.tier: str | None = None  # the service tier OpenAI says it served
        watch.counted = self.counted

    def counted(self) -> tuple[int | None, int | None]:
        """Both counts once the last chunk's usage came (none before it)."""
        usage = self.usage
        return (None, None) if usage is None else (usage.prompt_tokens, usage.completion_tokens)

    def add(self, chunk: Any) -> None:
        """Take one chunk (its text marks the stream alive, as a chunk without text does)."""
        self.first = self.first or chunk
        if chunk.usage is not None:
            self.usage = chunk.usage
        self.tier = getattr(chunk, "service_tier", None) or self.tier
        if not chunk.choices or not chunk.choices[0].delta.content:
            self.watch.tick()
        for choice in chunk.choices[:1]:
            self.choices = True
            delta = choice.delta
            if delta.content:
                self.text.append(delta.content)
                self.watch.wrote(delta.content)
            if delta.refusal:
                self.refusal.append(delta.refusal)
            extra = delta.model_extra
            if extra and isinstance(extra.get("reasoning_content"), str):  # compatible servers
                self.watch.wrote(extra["reasoning_content"])
                self.thinking.append(extra["reasoning_content"])
            self.finish = choice.finish_reason or self.finish

    def completion(self, model: str, provider: str) -> Completion:
        if self.first is None:
            raise ValueError("the stream had no chunk")
        refusal = "".join(self.refusal) or None
        text = "".join(self.text)
        answer = _completion(
            text, self.finish, refusal, self.choices, self.usage, self.first, model, provider
        )
        return replace(answer, thinking="".join(self.thinking), service_tier=self.tier)


def _params(request: CompletionRequest, model: str, max_tokens_param: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [{"role": m.role, "content": m.content} for m in request.messages]
    params: dict[str, Any] = {
        "model": model,
        "messages": messages,
        max_tokens_param: request.max_tokens,
    }
    # data: output_schema
    return params | openai_params(request) | structured.openai_params(request.output_schema)


def _failure(exc: openai.APIStatusError) -> HttpFailure:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") if isinstance(body.get("message"), str) else None
    return HttpFailure(
        status=exc.status_code,
        message=message or (exc.body if isinstance(exc.body, str) else "") or exc.message,
        error_type=str(exc.type or ""),
        code=str(exc.code or ""),
        headers=dict(exc.response.headers),
    )


def completion_of(response: ChatCompletion, model: str, provider: str) -> Completion:
    """The normalised answer of a chat completion (from a batch's output line)."""
    choice = response.choices[0] if response.choices else None
    message = choice.message if choice else None
    return _completion(
        (message.content or "") if message else "",
        (choice.finish_reason if choice else None) or "",
        message.refusal if message else None,
        choice is not None,
        response.usage,
        response,
        model,
        provider,
    )


def _completion(
    text: str,
    raw: str,
    refusal: str | None,
    has_choice: bool,
    usage: Any,
    head: Any,
    model: str,
    provider: str,
) -> Completion:
    """One normalised answer, streamed or whole (``head`` has the id and served model)."""
    refused = bool(refusal)
    prompt = usage.prompt_tokens_details if usage else None
    done = usage.completion_tokens_details if usage else None
    return Completion(
        text=text,
        stop_reason=STOP_REFUSAL if refused or not has_choice else _STOPS.get(raw, STOP_END),
        input_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.completion_tokens if usage else 0,
        model=model,
        provider=provider,
        cached_input_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        raw_stop_reason=raw or ("refusal" if refused else ""),
        extra={"id": head.id, "served_model": head.model, "refusal": refusal},
        reasoning_tokens=(done.reasoning_tokens or 0) if done else 0,
    )
