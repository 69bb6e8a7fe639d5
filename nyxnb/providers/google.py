"""``google``: Gemini through the official ``google-genai`` SDK (``genai.Client(...).aio``).

The key comes from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``; the SDK reads the endpoint from
``GOOGLE_GEMINI_BASE_URL`` itself (and calls ``/v1/models/{model}:generateContent`` by default).
google-genai does not retry unless given ``HttpRetryOptions``, so none are given: the fallback
chain owns retries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from nyxnb.errors import ProviderError
from nyxnb.providers import structured
from nyxnb.providers.base import (
    STOP_END,
    STOP_MAX_TOKENS,
    STOP_REFUSAL,
    Completion,
    CompletionRequest,
    Provider,
)
from nyxnb.providers.classify import (
    HttpFailure,
    cut_error,
    http_error,
    malformed_answer,
    transport_error,
)
from nyxnb.providers.endpoints import google_client
from nyxnb.providers.params import google_config, google_thoughts
from nyxnb.providers.streaming import StreamCut, Watch

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
        """Stream one generateContent request (``streamGenerateContent``) and normalise it."""
        model = self.model_for(request)
        watch = self.watch(request)
        streamed_ms = round(self.options.stream_read_s() * 1000)
        config = config_of(request).model_copy(
            update={"http_options": types.HttpOptions(timeout=streamed_ms)}
        )
        answer = _Answer(watch)

        async def stream(client: genai.Client) -> None:
            async with watch:
                chunks = await client.aio.models.generate_content_stream(
                    model=model, contents=contents_of(request), config=config
                )
                async for chunk in chunks:
                    answer.add(chunk)

        await self.sdk_call(stream)
        try:
            return completion_of(answer.response(), model, self.name)
        except Exception as exc:  # noqa: BLE001 - a 200 that is not a response stream
            raise malformed_answer(self.name, exc, self._key) from exc

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
        if isinstance(exc, StreamCut):
            return cut_error(self.name, exc, key)
        transport = transport_error(self.name, exc, key)
        if transport is not None:
            return transport
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
    """The generation config of a request: system prompt, token limit, sampling, thinking."""
    return types.GenerateContentConfig(
        system_instruction=request.system or None,
        max_output_tokens=request.max_tokens,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        **google_config(request),
        **structured.google_config(request.output_schema),  # data: output_schema
    )


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
    thinking, tier = google_thoughts(response)
    return Completion(
        text=text,
        stop_reason=stop,
        input_tokens=(usage.prompt_token_count or 0) if usage else 0,
        output_tokens=output,
        model=model,
        provider=provider,
        cached_input_tokens=(usage.cached_content_token_count or 0) if usage else 0,
        raw_stop_reason=raw,
        extra={"id": response.response_id, "served_model": response.model_version},
        reasoning_tokens=(usage.thoughts_token_count or 0) if usage else 0,
        thinking=thinking,
        service_tier=tier,
    )


class _Answer:
    """A streamed answer, accumulated from its chunks into one ``GenerateContentResponse``."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.last: types.GenerateContentResponse | None = None
        self.text: list[str] = []
        self.usage: types.GenerateContentResponseUsageMetadata | None = None
        self.finish: types.FinishReason | None = None
        self.feedback: types.GenerateContentResponsePromptFeedback | None = None
        self.candidates = False
        self.thoughts: list[str] = []  # kept only when the request asked (include_thoughts)
        watch.counted = self.counted

    def counted(self) -> tuple[int | None, int | None]:
        """The prompt's count (every chunk's usage has it); the output's once a chunk counts
        candidates (the last one: earlier chunks leave it out)."""
        usage = self.usage
        if usage is None:
            return None, None
        out = usage.candidates_token_count
        return usage.prompt_token_count, None if out is None else out + (
            usage.thoughts_token_count or 0
        )

    def add(self, chunk: types.GenerateContentResponse) -> None:
        """Take one chunk (its text marks the stream alive, as a chunk without text does)."""
        self.last = chunk
        self.usage = chunk.usage_metadata or self.usage
        self.feedback = chunk.prompt_feedback or self.feedback
        candidate = chunk.candidates[0] if chunk.candidates else None
        parts = candidate.content.parts if candidate and candidate.content else None
        if not parts or not any(part.text for part in parts):
            self.watch.tick()
        if candidate is None:
            return
        self.candidates = True
        self.finish = candidate.finish_reason or self.finish
        for part in parts or []:
            if part.text and part.thought:
                self.watch.wrote(part.text)
                self.thoughts.append(part.text)
            elif part.text:
                self.text.append(part.text)
                self.watch.wrote(part.text)

    def response(self) -> types.GenerateContentResponse:
        """The whole answer, as one response (its text joined, its last usage and finish)."""
        if self.last is None:
            raise ValueError("the stream had no chunk")
        candidates = None
        if self.candidates:
            parts = [types.Part(text="".join(self.text))]
            if self.thoughts:
                parts.insert(0, types.Part(text="".join(self.thoughts), thought=True))
            content = types.Content(role="model", parts=parts)
            candidates = [types.Candidate(content=content, finish_reason=self.finish, index=0)]
        return types.GenerateContentResponse(
            candidates=candidates,
            usage_metadata=self.usage,
            prompt_feedback=self.feedback,
            response_id=self.last.response_id,
            model_version=self.last.model_version,
        )
