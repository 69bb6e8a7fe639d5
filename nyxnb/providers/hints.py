"""Read what a provider's answer says about waiting: retry hints and rate-limit headers.

Every hint the providers send, as recorded in ``tests/recordings``:

- ``retry-after`` in seconds or as an HTTP date, and ``retry-after-ms`` (OpenAI, Anthropic);
- ``x-ratelimit-reset-*`` as Go durations (``2ms``, ``6m0s``, ``1h2m3.5s``: OpenAI);
- ``anthropic-ratelimit-*-reset`` as RFC 3339 times in whole seconds, measured against the
  answer's ``Date`` (the two clocks are the provider's, so the client's clock does not matter;
  a reset earlier than ``Date`` means "now");
- Gemini's ``google.rpc.RetryInfo.retryDelay`` (``"26s"`` or ``{"seconds": 26}``);
- "Please try again in 7m12s" / "Please retry in 36.4s" in the message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from nyxnb.rates import RateInfo

_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION_PART = r"[0-9]+(?:\.[0-9]+)?(?:ms|us|µs|ns|h|m|s)"
_DURATION = re.compile(rf"(?:{_DURATION_PART})+")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|us|µs|ns|h|m|s)")
_RETRY_IN = re.compile(rf"(?:retry|try again) (?:in|after) ({_DURATION_PART}(?:{_DURATION_PART})*)")
_RETRY_IN_WORDS = re.compile(
    r"(?:retry|try again) (?:in|after) ([0-9]+(?:\.[0-9]+)?) ?(seconds?|minutes?|hours?)\b"
)
_WORD_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def duration_s(value: object) -> float | None:
    """Seconds of a Go-style duration (``20ms``, ``6m0s``, ``1h2m3.5s``), or None."""
    text = str(value or "").strip()
    if not text or not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(text))


def _seconds(value: object, scale: float = 1.0) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(str(value).strip().removesuffix("s")) / scale
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _sent_at(headers: Mapping[str, str]) -> float:
    """When the answer was sent by the provider's clock (its ``Date``), else now."""
    try:
        return parsedate_to_datetime(headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return time.time()


def _http_date(value: str | None, sent_at: float) -> float | None:
    if not value:
        return None
    try:
        return max(parsedate_to_datetime(value).timestamp() - sent_at, 0.0)
    except (TypeError, ValueError, IndexError):
        return None


def _rpc_type(detail: Mapping[str, Any]) -> str:
    return str(detail.get("@type", "")).rsplit(".", 1)[-1]


def _retry_info_delay(details: Sequence[Mapping[str, Any]]) -> float | None:
    for detail in details:
        if _rpc_type(detail) == "RetryInfo":
            delay = detail.get("retryDelay")
            if isinstance(delay, Mapping):
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
            return duration_s(delay) if duration_s(delay) is not None else _seconds(delay)
    return None


def _in_message(message: str) -> float | None:
    found = _RETRY_IN.search(message.lower())
    if found:
        return duration_s(found.group(1))
    words = _RETRY_IN_WORDS.search(message.lower())
    if words:
        return float(words.group(1)) * _WORD_S[words.group(2).rstrip("s")]
    return None


def retry_after(
    headers: Mapping[str, str], details: Sequence[Mapping[str, Any]] = (), message: str = ""
) -> float | None:
    """Seconds the provider asks to wait: the first positive hint, else 0 if one said 0, else None.

    A hint of 0 (``retry-after: 0``) is no hint: the caller backs off on its own.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    sent_at = _sent_at(lower)
    candidates = (
        _seconds(lower.get("retry-after-ms"), scale=1000.0),
        _seconds(lower.get("retry-after")),
        _http_date(lower.get("retry-after"), sent_at),
        _retry_info_delay(details),
        _in_message(message),
    )
    found = [c for c in candidates if c is not None]
    return next((c for c in found if c > 0), 0.0 if found else None)


# RateInfo field prefix -> header stems, first found wins (Anthropic's input-token budget is
# what a request spends; its combined ``tokens`` budget is read when no split is sent).
_RATE_HEADERS = {
    "requests": ("x-ratelimit-{}-requests", "anthropic-ratelimit-requests-{}"),
    "tokens": (
        "x-ratelimit-{}-tokens",
        "anthropic-ratelimit-input-tokens-{}",
        "anthropic-ratelimit-tokens-{}",
    ),
}


def rate_info(headers: Mapping[str, str]) -> RateInfo | None:
    """Rate limits from OpenAI ``x-ratelimit-*`` or Anthropic ``anthropic-ratelimit-*`` headers.

    A limit that is not a positive number (``-1``, ``0``, ``abc``) is ignored with its stem.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    values: dict[str, Any] = {}
    for kind, stems in _RATE_HEADERS.items():
        for stem in stems:
            limit = count(lower.get(stem.format("limit")))
            if not limit:
                continue
            values[f"{kind}_limit"] = limit
            values[f"{kind}_remaining"] = count(lower.get(stem.format("remaining")))
            values[f"{kind}_reset_s"] = _reset_s(lower.get(stem.format("reset")), lower)
            break
    return RateInfo(**values) if values else None


def count(value: str | None) -> int | None:
    """A non-negative whole count, or None (absent, negative or not a number)."""
    try:
        number = int(float(value)) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def _reset_s(value: str | None, headers: Mapping[str, str]) -> float | None:
    """Seconds until reset: a Go duration (OpenAI) or an RFC 3339 time (Anthropic), measured
    against the answer's ``Date`` (read only then: parsing it is most of this function's cost)."""
    if not value:
        return None
    seconds = duration_s(value)
    if seconds is not None:
        return seconds
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return max(at.timestamp() - _sent_at(headers), 0.0)
