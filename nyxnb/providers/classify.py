"""Map a failed provider call (HTTP status, error body, headers) to an nyxnb error kind.

Each SDK module only translates its own exception types into an :class:`HttpFailure` (or names a
transport failure); every decision about *what the failure means* lives here, once.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nyxnb.errors import ErrorKind, ProviderError, ProviderRefused, ProviderUnavailable
from nyxnb.providers import hints
from nyxnb.providers.base import REFUSED_KINDS
from nyxnb.providers.hints import rate_info
from nyxnb.rates import RateInfo

#: Exceptions a call can fail with besides an HTTP status: ``timeout`` and ``connection``.
TIMEOUT, CONNECTION = ErrorKind.TIMEOUT, ErrorKind.CONNECTION

_EXHAUSTED_CODES = frozenset(
    {
        "insufficient_quota",  # OpenAI: no credit left
        "billing_hard_limit_reached",
        "billing_not_active",
        "billing_error",  # Anthropic error.type for 402
        "contract_spend_limit_reached",  # Anthropic details.error_code
        "enforced_spend_limit_reached",
        "linked_organization_spend_limit_reached",
        "linked_organization_billing_unavailable",
        "organization_on_hold",
    }
)
_EXHAUSTED_TEXT = ("credit balance is too low", "insufficient_quota", "insufficient credit")
_AUTH_CODES = frozenset({"api_key_invalid", "invalid_api_key", "authentication_error"})
_AUTH_TEXT = ("api key not valid", "invalid x-api-key", "incorrect api key", "invalid api key")
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_TEXT = (
    "prompt is too long",
    "maximum context length",
    "context length",
    "context window",
    "input token count",
    "too many tokens",
    "exceeds the maximum number of tokens",
    "input is too long",
)
_QUOTA_TEXT = "exceeded your current quota"
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{12,}|AIza[0-9A-Za-z_\-]{20,})")
_MAX_MESSAGE = 500

HINTS = {
    "exhausted": "add credit or quota at the provider; the fallback chain moves on meanwhile",
    "auth": "check the API key in the environment and its permissions",
    "not_found": "check the model name for this provider",
    "bad_request": "the request was rejected as malformed; check the step's parameters",
    "context_too_long": "shorten the prompt or choose a model with a larger context window",
    "rate_limited": "retried after the provider's retry-after; lower concurrency if it persists",
    "overloaded": "the provider is overloaded; retried with backoff, then the next provider",
    "server": "the provider failed; retried with backoff, then the next provider",
    "timeout": "raise timeout_s in the provider options if answers are legitimately slow",
    "connection": "check the network and the provider's base URL environment variable",
}


@dataclass(frozen=True)
class HttpFailure:
    """What an SDK exception says about a failed HTTP call, in provider-neutral terms.

    ``error_type`` is Anthropic's ``error.type``, OpenAI's ``error.type`` or Gemini's
    ``error.status``; ``code`` is Anthropic's ``error.details.error_code``, OpenAI's
    ``error.code`` or Gemini's ``ErrorInfo.reason``; ``details`` are Gemini's ``google.rpc``
    detail objects.
    """

    status: int
    message: str = ""
    error_type: str = ""
    code: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    details: Sequence[Mapping[str, Any]] = ()

    @property
    def text(self) -> str:
        """Type, code and message, lower-cased, for pattern matching."""
        return f"{self.error_type} {self.code} {self.message}".lower()


def classify(failure: HttpFailure) -> str:
    """The error kind of an HTTP failure (one of :data:`nyxnb.providers.ERROR_KINDS`)."""
    status, text = failure.status, failure.text
    if _is_exhausted(failure):
        return "exhausted"
    if status in (401, 403) or _matches(failure, _AUTH_CODES, _AUTH_TEXT):
        return "auth"
    if status == 400 and failure.error_type.upper() == "FAILED_PRECONDITION":
        return "auth"  # Gemini: API not available in this region / for this account
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status == 529 or failure.error_type == "overloaded_error":
        return "overloaded"
    if status == 503 and "overloaded" in text:
        return "overloaded"
    if status == 408:
        return TIMEOUT
    if status == 413 or (status < 500 and _matches(failure, _CONTEXT_CODES, _CONTEXT_TEXT)):
        return "context_too_long"
    if status >= 500 or status == 409:
        return "server"
    return "bad_request"


def _matches(failure: HttpFailure, codes: frozenset[str], texts: tuple[str, ...]) -> bool:
    lowered = {failure.code.lower(), failure.error_type.lower()}
    return bool(lowered & codes) or any(t in failure.text for t in texts)


def _is_exhausted(failure: HttpFailure) -> bool:
    if failure.status == 402 or _matches(failure, _EXHAUSTED_CODES, _EXHAUSTED_TEXT):
        return True
    return failure.status == 429 and _is_quota_exhausted(failure)


def _is_quota_exhausted(failure: HttpFailure) -> bool:
    """A quota 429 that will not clear within the run: a daily or zero quota, or no retry hint.

    Gemini reports per-minute limits as quota failures too ("You exceeded your current quota",
    a ``QuotaFailure`` for ``...PerMinute...`` and a ``RetryInfo``); those are rate limits.
    """
    violations = [v for d in failure.details if _rpc_type(d) == "QuotaFailure" for v in _list(d)]
    if not violations and _QUOTA_TEXT not in failure.text:
        return False
    for violation in violations:
        quota_id = str(violation.get("quotaId", "")).lower()
        if "perday" in quota_id or str(violation.get("quotaValue", "")) == "0":
            return True
    return retry_after(failure) is None


def _per_day(failure: HttpFailure) -> bool:
    """A Gemini ``QuotaFailure`` of a per-day quota, or OpenAI's "requests per day" text."""
    ids = [
        str(v.get("quotaId", "")).lower()
        for d in failure.details
        if _rpc_type(d) == "QuotaFailure"
        for v in _list(d)
    ]
    return any("perday" in i for i in ids) or "per day" in failure.text


def _pacific_midnight() -> str:
    """The next midnight in US Pacific time (when Gemini's daily quotas reset), in UTC."""
    try:
        now = datetime.now(ZoneInfo("America/Los_Angeles"))
    except ZoneInfoNotFoundError:  # no time zone database on this machine
        return "midnight US Pacific time"
    midnight = datetime.combine(now.date() + timedelta(days=1), time(0), now.tzinfo)
    return f"{midnight.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _rpc_type(detail: Mapping[str, Any]) -> str:
    return str(detail.get("@type", "")).rsplit(".", 1)[-1]


def _list(detail: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    violations = detail.get("violations")
    return [v for v in violations if isinstance(v, Mapping)] if isinstance(violations, list) else []


def retry_after(failure: HttpFailure) -> float | None:
    """Seconds to wait before retrying, from headers, Gemini's ``RetryInfo`` or the message."""
    return hints.retry_after(failure.headers, failure.details, failure.message)


def redact(text: str, secret: str | None = None) -> str:
    """``text`` without the API key (and anything shaped like a provider key), shortened."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = _KEY_PATTERN.sub("[redacted]", text)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def make_error(
    provider: str,
    kind: str,
    message: str,
    *,
    secret: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """The nyxnb error for ``kind``: refused/fatal kinds refuse, the rest are unavailable."""
    refused = kind in REFUSED_KINDS or kind in ("bad_request", "context_too_long")
    cls = ProviderRefused if refused else ProviderUnavailable
    return cls(
        redact(message, secret) or kind,
        provider=provider,
        kind=kind,
        retry_after=retry_after,
        hint=HINTS.get(kind),
    )


def http_error(provider: str, failure: HttpFailure, *, secret: str | None = None) -> ProviderError:
    """The nyxnb error for an HTTP failure, with ``retry_after`` when the provider gave one."""
    kind = classify(failure)
    delay = retry_after(failure) if kind in ("rate_limited", "overloaded", "server") else None
    message = f"HTTP {failure.status}: {failure.message or failure.error_type or 'error'}"
    if kind == "exhausted" and _per_day(failure):
        message += f" (a daily quota: it resets at {_pacific_midnight()})"
    error = make_error(provider, kind, message, secret=secret, retry_after=delay)
    error.rate = rate_info(failure.headers) or _quota_rate(failure.details)
    return error


def _quota_rate(details: Sequence[Mapping[str, Any]]) -> RateInfo | None:
    """Gemini's per-minute limits, from the ``QuotaFailure`` of a 429 (it sends no headers)."""
    values: dict[str, int] = {}
    for detail in details:
        if _rpc_type(detail) != "QuotaFailure":
            continue
        for violation in _list(detail):
            quota_id = str(violation.get("quotaId", "")).lower()
            limit = hints.count(str(violation.get("quotaValue", "")))
            if "perminute" not in quota_id or not limit:
                continue
            kind = "tokens" if "token" in quota_id else "requests"
            values[f"{kind}_limit"], values[f"{kind}_remaining"] = limit, 0
    return RateInfo(**values) if values else None


def malformed_answer(provider: str, exc: BaseException, key: str | None) -> ProviderError:
    """A 200 whose body could not be read as an answer (invalid JSON, an HTML page): transient."""
    return make_error(
        provider, "server", f"malformed answer: {type(exc).__name__}: {exc}", secret=key
    )


def sdk_error(
    provider: str, sdk: Any, exc: BaseException, failure: HttpFailure | None, key: str | None
) -> ProviderError:
    """Map an exception of a Stainless-generated SDK (``anthropic``, ``openai``).

    Both SDKs share one exception tree: ``APIStatusError`` (an HTTP answer, described by
    ``failure``), ``APITimeoutError`` and ``APIConnectionError``; anything else is SDK-side.
    """
    if failure is not None and isinstance(exc, sdk.APIStatusError):
        return http_error(provider, failure, secret=key)
    if isinstance(exc, sdk.APITimeoutError):
        kind = TIMEOUT
    elif isinstance(exc, sdk.APIConnectionError):
        kind = CONNECTION
    else:
        kind = ErrorKind.SERVER  # response validation and other SDK-side failures
    return make_error(provider, kind, str(exc), secret=key)


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


def transport_error(provider: str, exc: BaseException, key: str | None) -> ProviderError | None:
    """A timeout or dropped connection of the HTTP stack (mid-stream too), or None."""
    timeouts, connections = _transport_errors()
    if isinstance(exc, timeouts):
        return make_error(provider, TIMEOUT, str(exc) or "request timed out", secret=key)
    if isinstance(exc, connections):
        return make_error(provider, CONNECTION, str(exc) or "connection failed", secret=key)
    return None


def cut_error(provider: str, cut: Any, key: str | None) -> ProviderError:
    """The error of a streamed call cut by its first-byte or idle timeout (a ``StreamCut``).

    ``hung`` says no byte came at all: the fallback chain takes one hung call as enough to know
    the provider is hung for every item waiting for it.
    """
    error = make_error(provider, TIMEOUT, str(cut), secret=key)
    error.hung = bool(cut.hung)
    error.partial = getattr(cut, "usage", None)
    return error
