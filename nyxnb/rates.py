"""What a provider said about its rate limits, as one frozen value every layer can hold.

Providers build it from an answer's headers (``nyxnb.providers.hints``); the engine's governor
reads it (``nyxnb.engine.calls.governor``); errors carry it (``ProviderError.rate``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateInfo:
    """A provider's rate-limit headers (any field None when not sent or not usable).

    ``*_reset_s`` is how long until that budget is full again, measured when the answer was
    sent (OpenAI sends a duration such as ``6m0s``; Anthropic an RFC 3339 time, measured here
    against the answer's ``Date``).  Tokens are Anthropic's input tokens.  Limits are positive
    and remainders never negative: nonsense values (``-1`` from some gateways) are dropped.
    """

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_s: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_s: float | None = None

    def exhausted_for_s(self) -> float:
        """Seconds until a budget that the answer says is spent (remaining 0) resets, else 0."""
        waits = [
            reset or 0.0
            for remaining, reset in (
                (self.requests_remaining, self.requests_reset_s),
                (self.tokens_remaining, self.tokens_reset_s),
            )
            if remaining == 0
        ]
        return max(waits, default=0.0)
