"""What a call produced, as every room of the engine passes it: attempts and the accepted answer.

:class:`Attempt` is one provider attempt (a row of ``llm_calls`` to be); :class:`ChainResult` is the
answer the fallback chain accepted, with every attempt made for it. ``calls/`` builds them and
``durable/`` writes them; neither imports the other, both import this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from nyxnb.errors import ErrorKind
from nyxnb.providers.base import Completion


@dataclass
class Attempt:
    """One provider attempt; becomes a row of ``llm_calls``."""

    provider: str
    model: str
    attempt: int
    outcome: str  # ok | error | cached
    error_kind: ErrorKind | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    cached: bool = False
    batch_id: str | None = None
    service_tier: str = "live"  # live | batch: how it was processed (the batch API or not)
    #: the provider's tier the call was served at (flex | priority | default; None: no tiers)
    api_tier: str | None = None
    reasoning_tokens: int = 0  # thinking/reasoning tokens, included in output_tokens
    thinking: str | None = None  # thinking text, only with ``keep_thinking: true``


@dataclass
class ChainResult:
    """The accepted answer, every attempt made for it, and the cache key to remember it by."""

    completion: Completion
    attempts: list[Attempt]
    cache_key: str | None = None
    from_cache: bool = False

    @property
    def provider(self) -> str:
        """The provider that answered."""
        return self.completion.provider
