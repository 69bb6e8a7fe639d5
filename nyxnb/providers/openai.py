"""``openai``: OpenAI (or any OpenAI-compatible server) through the official ``openai`` SDK.

Uses ``AsyncOpenAI`` Chat Completions.  The key comes from ``OPENAI_API_KEY`` and the endpoint from
``OPENAI_BASE_URL`` (read by the SDK; include ``/v1``), which also reaches local servers such as
Ollama, vLLM or llama.cpp.  SDK retries are off: the fallback chain owns retries.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion

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
from nyxnb.providers.endpoints import openai_client
from nyxnb.providers.params import openai_params, openai_usage

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
        """Send one Chat Completions request and normalise the answer."""
        client = self.client()
        model = self.model_for(request)
        try:
            raw = await client.chat.completions.with_raw_response.create(**self.params(request))
        except openai.OpenAIError as exc:
            raise self._error(exc, client.api_key) from exc
        try:
            response = await _parsed(raw)
            answer = completion_of(response, model, self.name)
        except Exception as exc:  # noqa: BLE001 - a 200 that is not a chat completion
            raise malformed_answer(self.name, exc, client.api_key) from exc
        answer.extra["rate"] = rate_info(raw.headers)
        return answer

    def _error(self, exc: Exception, key: str | None) -> ProviderError:
        """The nyxnb error for an SDK exception."""
        failure = _failure(exc) if isinstance(exc, openai.APIStatusError) else None
        return sdk_error(self.name, openai, exc, failure, key)


def _params(request: CompletionRequest, model: str, max_tokens_param: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [{"role": m.role, "content": m.content} for m in request.messages]
    params: dict[str, Any] = {
        "model": model,
        "messages": messages,
        max_tokens_param: request.max_tokens,
    }
    return params | openai_params(request)


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
    """The normalised answer of a chat completion (live or from a batch's output line)."""
    choice = response.choices[0] if response.choices else None
    message = choice.message if choice else None
    raw = (choice.finish_reason if choice else None) or ""
    refused = bool(message and message.refusal)
    usage = response.usage
    details = usage.prompt_tokens_details if usage else None
    reasoning, thinking = openai_usage(usage, message)
    return Completion(
        text=(message.content or "") if message else "",
        stop_reason=STOP_REFUSAL if refused or not choice else _STOPS.get(raw, STOP_END),
        input_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.completion_tokens if usage else 0,
        model=model,
        provider=provider,
        cached_input_tokens=(details.cached_tokens or 0) if details else 0,
        raw_stop_reason=raw or ("refusal" if refused else ""),
        reasoning_tokens=reasoning,
        thinking=thinking,
        service_tier=getattr(response, "service_tier", None),
        extra={
            "id": response.id,
            "served_model": response.model,
            "refusal": message.refusal if message else None,
        },
    )


async def _parsed(raw: Any) -> Any:
    """The parsed body of a raw response (the SDK's ``parse`` is sync or async by version)."""
    parsed = raw.parse()
    return await parsed if inspect.isawaitable(parsed) else parsed
