"""What the fake answers: replies, HTTP faults and transport faults, as frozen action values.

Each request to a provider consumes one action (see :meth:`FakeProviderServer.script`).  Besides
replies and HTTP errors in each provider's wire format there are transport faults, for the
reliability tests: :func:`hang`, :func:`malformed`, :func:`html_page`, :func:`empty`,
:func:`flaky` and :func:`reset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROVIDERS = ("anthropic", "openai", "google")
FAKE_KEYS = {
    "ANTHROPIC_API_KEY": "sk-ant-fake-0000000000000000",
    "OPENAI_API_KEY": "sk-fake-openai-000000000000",
    "GEMINI_API_KEY": "fake-gemini-key-000000000000",
}
_RPC = "type.googleapis.com/google.rpc."


@dataclass(frozen=True)
class Reply:
    """A successful answer; ``input_tokens`` counts the whole prompt, cached tokens included."""

    text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    stop: str = "end"  # "end" | "max_tokens" | "refusal" | "blocked" (Gemini prompt blocked)
    latency_ms: float = 0
    raw_stop: str | None = None  # exact wire value, e.g. "content_filter" or "RECITATION"
    #: thinking tokens on top of ``output_tokens`` (Anthropic thinking block, OpenAI
    #: ``reasoning_tokens``, Gemini ``thoughtsTokenCount``)
    reasoning_tokens: int = 0
    #: a streamed answer waits this long before each chunk after the first (a slow answer)
    chunk_delay_ms: float = 0
    #: a streamed answer falls silent this long after its first chunk (a stalled answer)
    stall_s: float = 0
    #: a request asking for a JSON schema gets JSON that does not parse (an invalid answer)
    invalid_json: bool = False
    thinking: str = ""  # thinking text (Anthropic block, Gemini thought part, reasoning_content)


@dataclass(frozen=True)
class Fault:
    """An HTTP error; ``type`` is Anthropic/OpenAI ``error.type`` or Gemini ``error.status``."""

    status: int
    message: str
    code: str | None = None
    type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    details: tuple[Mapping[str, Any], ...] = ()
    latency_ms: float = 0
    variants: Mapping[str, Fault] = field(default_factory=dict)

    def for_provider(self, provider: str) -> Fault:
        """The variant of this fault in ``provider``'s terms."""
        return self.variants.get(provider, self)


@dataclass(frozen=True)
class Hang:
    """Hold the request for ``seconds`` (until the server stops), then answer with ``then``."""

    seconds: float
    then: Reply = field(default_factory=Reply)


reply = Reply  # reply(text, input_tokens=..., output_tokens=..., cached_tokens=0, stop="end", ...)
hang = Hang  # hang(seconds): hold the request, then answer; drives client timeouts


def error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    latency_ms: float = 0,
) -> Fault:
    """An HTTP error with ``status`` and ``message``, in each provider's wire format."""
    return Fault(status, message, code=code, headers=dict(headers or {}), latency_ms=latency_ms)


def credit_exhausted() -> Fault:
    """Anthropic's 400 for an account out of credit."""
    msg = (
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    )
    return Fault(400, msg + "to upgrade or purchase credits.", type="invalid_request_error")


_QUOTA = "You exceeded your current quota, please check your plan and billing details."


def insufficient_quota() -> Fault:
    """OpenAI's 429 for an account out of quota (not a rate limit)."""
    return Fault(429, _QUOTA, code="insufficient_quota", type="insufficient_quota")


def gemini_quota_exhausted() -> Fault:
    """Gemini's 429 RESOURCE_EXHAUSTED for a used-up daily quota."""
    quota = {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "250"}
    detail = {"@type": _RPC + "QuotaFailure", "violations": [quota]}
    return Fault(429, _QUOTA, type="RESOURCE_EXHAUSTED", details=(detail,))


#: The recordings (``tests/recordings``) each provider's default :func:`rate_limited` follows:
#: (body, headers).  Anthropic's and OpenAI's 429 bodies and headers come from different threads.
RATE_LIMIT_SOURCES = {
    "anthropic": (
        "anthropic/error_429_rate_limit_error_body",
        "anthropic/error_429_rate_limit_headers",
    ),
    "openai": (
        "openai/error_429_rate_limit_exceeded_rpd",
        "openai/error_429_headers_without_ratelimit",
    ),
    "google": (
        "google/error_429_resource_exhausted_no_details",
        "google/error_429_resource_exhausted_no_details",
    ),
}
_ANTHROPIC_LIMIT = (
    "This request would exceed the rate limit for your organization (org-fake) of 20,000 input "
    "tokens per minute. For details, refer to: https://docs.anthropic.com/en/api/rate-limits. You "
    "can see the response headers for current usage. Please reduce the prompt length or the "
    "maximum tokens requested, or try again later."
)
_OPENAI_LIMIT = (
    "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in {}s. "
    "Visit https://platform.openai.com/account/rate-limits to learn more."
)


def _secs(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def rate_limited(retry_after_s: float | None = None) -> Fault:
    """A 429 rate limit as each provider sends it in the recordings (:data:`RATE_LIMIT_SOURCES`).

    By default (``retry_after_s`` None):

    - Anthropic: ``retry-after`` in whole seconds and ``x-should-retry: true``, as in
      ``anthropic/error_429_rate_limit_headers`` (Anthropic sends ``retry-after`` on every 429
      since 2024; it said 16 there, 1 here), with the ``rate_limit_error`` body of
      ``anthropic/error_429_rate_limit_error_body``, which names no delay.  The
      ``anthropic-ratelimit-*`` headers of that 429 are left to :class:`~nyxnb.testing.Limit`,
      whose buckets know real remaining counts and resets.
    - OpenAI: no header at all (no ``retry-after``, no ``x-ratelimit-*``), as in
      ``openai/error_429_headers_without_ratelimit``; the only hint is the message's "Please try
      again in 1s", worded as ``openai/error_429_rate_limit_exceeded_rpd`` (there 8.64s).
    - Gemini: ``RESOURCE_EXHAUSTED`` with no details, as in
      ``google/error_429_resource_exhausted_no_details``: no hint at all.

    With ``retry_after_s``, every provider names that delay: a ``retry-after`` header (Anthropic,
    OpenAI, whose message says it too) or a ``RetryInfo`` beside a per-minute ``QuotaFailure``
    (Gemini, as in ``google/error_429_quota_failure_retryinfo_per_minute``).
    """
    hinted = retry_after_s is not None
    seconds = _secs(retry_after_s if retry_after_s is not None else 1)
    anthropic_headers = {"retry-after": seconds if hinted else "1", "x-should-retry": "true"}
    anthropic = Fault(429, _ANTHROPIC_LIMIT, type="rate_limit_error", headers=anthropic_headers)
    gemini = Fault(
        429, "Resource has been exhausted (e.g. check quota).", type="RESOURCE_EXHAUSTED"
    )
    if hinted:
        gemini = _gemini_per_minute(seconds)
    return Fault(
        429,
        _OPENAI_LIMIT.format(seconds),
        code="rate_limit_exceeded",
        type="requests",
        headers={"retry-after": seconds} if hinted else {},
        variants={"google": gemini, "anthropic": anthropic},
    )


def _gemini_per_minute(seconds: str) -> Fault:
    """Gemini's per-minute quota 429, naming its delay (a ``RetryInfo``)."""
    quota = {
        "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
        "quotaValue": "250000",
    }
    details = (
        {"@type": _RPC + "QuotaFailure", "violations": [quota]},
        {"@type": _RPC + "RetryInfo", "retryDelay": f"{seconds}s"},
    )
    message = f"{_QUOTA} Please retry in {seconds}s."
    return Fault(429, message, type="RESOURCE_EXHAUSTED", details=details)


def flex_unavailable() -> Fault:
    """OpenAI's 429 when flex processing has no capacity ("429 Resource Unavailable" in OpenAI's
    flex-processing guide): no retry hint, and not a quota exhaustion; it waits like any 429."""
    return Fault(
        429,
        "Resource Unavailable: there is not enough capacity for flex processing right now.",
        code="resource_unavailable",
        type="resource_unavailable",
    )


def bare_rate_limited() -> Fault:
    """A 429 with no hint at all: no headers, no ``RetryInfo``, no "try again in" (as recorded).

    Gemini's shared-capacity "Resource exhausted. Please try again later." and OpenAI or
    Anthropic 429s relayed by gateways that drop headers look like this.
    """
    gemini = Fault(429, "Resource exhausted. Please try again later.", type="RESOURCE_EXHAUSTED")
    anthropic = Fault(
        429,
        "This request would exceed your account's rate limit. Please try again later.",
        type="rate_limit_error",
    )
    return Fault(
        429,
        "Rate limit reached for requests",
        code="rate_limit_exceeded",
        type="requests",
        variants={"google": gemini, "anthropic": anthropic},
    )


def overloaded() -> Fault:
    """Anthropic's 529 overloaded_error (Gemini and OpenAI: 503 "model is overloaded")."""
    busy = Fault(503, "The model is overloaded. Please try again later.")
    return Fault(529, "Overloaded", variants={"google": busy, "openai": busy})


def server_error(status: int = 500) -> Fault:
    """A 5xx server error."""
    return Fault(status, "Internal server error")


def auth_error() -> Fault:
    """A rejected API key (Gemini answers 400 API_KEY_INVALID, as the real API does)."""
    info = {"@type": _RPC + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
    msg = "API key not valid. Please pass a valid API key."
    gemini = Fault(400, msg, details=(info,))
    return Fault(401, "invalid x-api-key", code="invalid_api_key", variants={"google": gemini})


def model_not_found(model: str = "no-such-model") -> Fault:
    """A 404 for an unknown model."""
    return Fault(404, f"model: {model}", code="model_not_found")


def context_too_long() -> Fault:
    """A 400 for a prompt beyond the model's context window, worded as each provider words it."""
    openai = "This model's maximum context length is 128000 tokens. However, your messages "
    openai += "resulted in 130000 tokens. Please reduce the length of the messages."
    gemini = (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    )
    variants = {
        "openai": Fault(400, openai, code="context_length_exceeded"),
        "google": Fault(400, gemini),
    }
    return Fault(400, "prompt is too long: 210000 tokens > 200000 maximum", variants=variants)


def prompt_blocked() -> Reply:
    """Gemini's blocked prompt (no candidates); a refusal for the other providers."""
    return Reply(text="", stop="blocked", output_tokens=0)


@dataclass(frozen=True)
class Raw:
    """A 200 answer with a body the SDKs cannot parse (invalid JSON, an HTML page)."""

    body: bytes
    content_type: str = "application/json"
    latency_ms: float = 0


@dataclass(frozen=True)
class Reset:
    """Send the status line and part of the body, then drop the connection."""

    latency_ms: float = 0


@dataclass(frozen=True)
class Flaky:
    """Fail the first ``n`` requests with ``fault``, then answer with ``then``.

    ``per_prompt`` (default) counts per distinct prompt, so concurrent items each see their own
    first ``n`` failures; otherwise the count is shared by every request using this action.
    """

    n: int
    then: Reply | Fault = field(default_factory=Reply)
    fault: Fault = field(default_factory=lambda: server_error(503))
    per_prompt: bool = True


def malformed() -> Raw:
    """A 200 whose body is not valid JSON."""
    return Raw(b'{"id": "truncated", "choices": [')


def html_page() -> Raw:
    """A 200 text/html page (a captive portal or proxy error page)."""
    page = b"<!doctype html><html><head><title>Gateway</title></head><body>Hi</body></html>"
    return Raw(page, content_type="text/html; charset=utf-8")


def empty() -> Reply:
    """A well-formed 200 whose answer text is empty."""
    return Reply(text="", output_tokens=0)


def flaky(n: int, then: Reply | Fault | None = None, fault: Fault | None = None) -> Flaky:
    """The first ``n`` requests (per prompt) fail with ``fault`` (a 503), then ``then``."""
    return Flaky(n, then or Reply(), fault or server_error(503))


def reset() -> Reset:
    """Close the connection in the middle of the response."""
    return Reset()


#: One scripted answer of a provider.
Action = Reply | Fault | Hang | Raw | Reset | Flaky
