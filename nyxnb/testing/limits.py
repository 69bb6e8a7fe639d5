"""Request and token limits of the fake, per provider and model, with each provider's headers.

A limit is a token bucket refilled at ``rpm / 60`` requests (and ``tpm / 60`` tokens) per second
that holds ``burst_s`` seconds of budget: real providers enforce a per-minute limit at a finer
grain too ("60,000 requests per minute may be enforced as 1,000 per second", OpenAI's guide), so
a client cannot spend the whole minute in its first second.

Every answer of a limited provider carries its rate-limit headers, and a request over budget gets
the provider's own 429: OpenAI ``x-ratelimit-*`` headers and a ``rate_limit_exceeded`` body that
says "Please try again in 120ms"; Anthropic ``anthropic-ratelimit-*`` headers, ``retry-after``
and a ``rate_limit_error``; Gemini a ``RESOURCE_EXHAUSTED`` body with a per-minute
``QuotaFailure`` and a ``google.rpc.RetryInfo`` ``retryDelay`` (and no headers).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nyxnb.testing.faults import Fault, bare_rate_limited

_RPC = "type.googleapis.com/google.rpc."


@dataclass(frozen=True)
class Limit:
    """Limits of one provider (and model): requests and tokens per minute.

    ``tpm`` counts input plus output tokens (Anthropic: input tokens only, with ``output_tpm``
    for output tokens).  None means unlimited.
    """

    rpm: int | None = None
    tpm: int | None = None
    output_tpm: int | None = None
    burst_s: float = 1.0
    #: False: say nothing (no rate headers, 429s without any retry hint), like a gateway
    hints: bool = True


@dataclass
class _Bucket:
    per_min: int
    burst_s: float
    level: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    @property
    def capacity(self) -> float:
        return max(1.0, self.per_min * self.burst_s / 60)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.per_min / 60)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0: it fits now)."""
        need = min(amount, self.capacity) - self.level
        return max(need, 0.0) * 60 / self.per_min

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) * 60 / self.per_min


@dataclass(frozen=True)
class Verdict:
    """What the limits say about one request: headers to send, and the 429 if over budget."""

    headers: dict[str, str]
    fault: Fault | None = None


class RateLimits:
    """Limits per ``(provider, model)``; a rule without a model applies to each model apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[tuple[str, str], Limit] = {}
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}

    def set(self, provider: str, limit: Limit, model: str | None = None) -> None:
        """Limit ``provider`` (each model separately, or only ``model``)."""
        with self._lock:
            self._rules[(provider, model or "")] = limit
            self._buckets = {k: b for k, b in self._buckets.items() if k[0] != provider}

    def clear(self) -> None:
        """Remove every limit."""
        with self._lock:
            self._rules.clear()
            self._buckets.clear()

    def admit(self, provider: str, model: str, tokens_in: int, tokens_out: int) -> Verdict:
        """Charge one request; over budget, charge nothing and return the provider's 429."""
        with self._lock:
            limit = self._rules.get((provider, model)) or self._rules.get((provider, ""))
            if limit is None:
                return Verdict({})
            now = time.monotonic()
            split = provider == "anthropic"
            wants = {
                "requests": (limit.rpm, 1),
                "tokens": (limit.tpm, tokens_in if split else tokens_in + tokens_out),
                "output": (limit.output_tpm if split else None, tokens_out),
            }
            buckets = {
                kind: self._bucket(provider, model, kind, per_min, limit.burst_s, now)
                for kind, (per_min, _) in wants.items()
                if per_min
            }
            waits = {kind: b.wait_for(wants[kind][1]) for kind, b in buckets.items()}
            over = max(waits, key=lambda k: waits[k]) if waits else None
            if over is not None and waits[over] > 0:
                if not limit.hints:
                    return Verdict({}, bare_rate_limited())
                headers = _headers(provider, buckets)
                return Verdict(headers, _fault(provider, model, over, buckets[over], waits[over]))
            for kind, b in buckets.items():
                b.level -= min(wants[kind][1], b.capacity)
            if not limit.hints:
                return Verdict({})
            headers = _headers(provider, buckets)
            if provider == "anthropic":  # Anthropic sends retry-after on its 200s too
                headers["retry-after"] = str(max(1, math.ceil(min(waits.values(), default=0))))
            return Verdict(headers)

    def _bucket(
        self, provider: str, model: str, kind: str, per_min: int, burst_s: float, now: float
    ) -> _Bucket:
        key = (provider, model, kind)
        if key not in self._buckets:
            self._buckets[key] = _Bucket(per_min, burst_s, at=now)
        bucket = self._buckets[key]
        bucket.refill(now)
        return bucket


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"


def _headers(provider: str, buckets: dict[str, _Bucket]) -> dict[str, str]:
    headers: dict[str, str] = {}
    if provider == "openai":
        for kind, b in buckets.items():
            if kind in ("requests", "tokens"):
                headers[f"x-ratelimit-limit-{kind}"] = str(b.per_min)
                headers[f"x-ratelimit-remaining-{kind}"] = str(math.floor(b.level))
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(b.reset_s())
    elif provider == "anthropic":
        names = {"requests": "requests", "tokens": "input-tokens", "output": "output-tokens"}
        for kind, b in buckets.items():
            _anthropic_headers(headers, names[kind], b.per_min, b.level, b.reset_s())
        if "tokens" in buckets or "output" in buckets:  # the combined budget, as sent
            parts = [buckets[k] for k in ("tokens", "output") if k in buckets]
            limit = sum(b.per_min for b in parts)
            level = sum(b.level for b in parts)
            _anthropic_headers(headers, "tokens", limit, level, max(b.reset_s() for b in parts))
    return headers


def _anthropic_headers(
    headers: dict[str, str], name: str, limit: int, level: float, reset_s: float
) -> None:
    """Anthropic's ``anthropic-ratelimit-{name}-*``: its resets are whole seconds, truncated, so
    a reset due within the second reads as earlier than the answer's ``Date``."""
    at = (datetime.now(UTC) + timedelta(seconds=reset_s)).replace(microsecond=0)
    prefix = f"anthropic-ratelimit-{name}"
    headers[f"{prefix}-limit"] = str(limit)
    headers[f"{prefix}-remaining"] = str(math.floor(level))
    headers[f"{prefix}-reset"] = at.isoformat().replace("+00:00", "Z")


def _fault(provider: str, model: str, kind: str, bucket: _Bucket, wait_s: float) -> Fault:
    unit = "requests" if kind == "requests" else "tokens"
    if provider == "openai":
        msg = (
            f"Rate limit reached for {model} in organization org-fake on {unit} per min "
            f"({'RPM' if unit == 'requests' else 'TPM'}): Limit {bucket.per_min}, Used "
            f"{bucket.per_min}, Requested 1. Please try again in {go_duration(wait_s)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        return Fault(429, msg, code="rate_limit_exceeded", type=unit)
    if provider == "anthropic":
        what = {"requests": "requests", "tokens": "input tokens", "output": "output tokens"}[kind]
        msg = (
            f"This request would exceed the rate limit for your organization (org-fake) of "
            f"{bucket.per_min} {what} per minute. For details, refer to: "
            "https://docs.claude.com/en/api/rate-limits."
        )
        headers = {"retry-after": str(max(1, math.ceil(wait_s)))}
        return Fault(429, msg, type="rate_limit_error", headers=headers)
    quota = "GenerateRequestsPerMinutePerProjectPerModel"
    if kind != "requests":
        quota = "GenerateContentInputTokensPerModelPerMinute"
    violation = {
        "quotaId": quota,
        "quotaDimensions": {"model": model},
        "quotaValue": str(bucket.per_min),
    }
    details = (
        {"@type": _RPC + "QuotaFailure", "violations": [violation]},
        {"@type": _RPC + "RetryInfo", "retryDelay": f"{wait_s:.3f}s"},
    )
    msg = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"Please retry in {wait_s:.6f}s."
    )
    return Fault(429, msg, type="RESOURCE_EXHAUSTED", details=details)
