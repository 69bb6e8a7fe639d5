"""The fallback chain: try providers in order, deciding by *why* a call failed.

- exhausted / auth / not_found (and a missing key): the provider is marked down for the rest of the
  run -- no later item calls it again -- and the next provider is tried at once;
- rate_limited / overloaded / server / timeout / connection: bounded retries with backoff
  (honouring retry-after), then the next provider; a provider that fails like this for
  ``RetryPolicy.down_after`` calls in a row is marked down too (a circuit breaker);
- truncated / refused answers and bad_request / context_too_long: never accepted; next provider.

Until a provider has answered once in a run, only one call at a time may go to it (a probe), so
a provider that is out of credit is called once per run, not once per concurrent item.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from nyxnb.errors import ChainExhausted, MissingKey, ProviderError
from nyxnb.providers.base import (
    REFUSED_KINDS,
    STOP_MAX_TOKENS,
    STOP_REFUSAL,
    TRANSIENT_KINDS,
    Completion,
    CompletionRequest,
    Provider,
)
from nyxnb.providers.pricing import price_for
from nyxnb.providers.registry import create_provider, provider_class


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient failures, per provider and call (the SDKs' own retries are off)."""

    max_attempts: int = 3
    initial_delay_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 20.0
    max_retry_after_s: float = 60.0
    down_after: int = 3

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        return min(self.initial_delay_s * self.multiplier ** (attempt - 1), self.max_delay_s)


@dataclass
class Attempt:
    """One provider attempt; becomes a row of ``llm_calls``."""

    provider: str
    model: str
    attempt: int
    outcome: str  # ok | error | cached
    error_kind: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    cached: bool = False
    batch_id: str | None = None
    service_tier: str = "live"  # live | batch


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


@dataclass
class _Health:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proven: bool = False
    failures_in_a_row: int = 0


CacheLookup = Callable[[str, str, CompletionRequest], tuple[str, Completion | None]]
FallbackHook = Callable[[str, "str | None", str, str], None]


def parse_entry(entry: str) -> tuple[str, str | None]:
    """Split a chain entry: ``"google:gemini-2.5-pro"`` -> ("google", "gemini-2.5-pro")."""
    name, _, model = entry.partition(":")
    return name, model or None


class ProviderPool:
    """Provider instances and their health for one run."""

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        options: dict[str, dict[str, object]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.options = options or {}
        self.sleep = sleep
        self.down: dict[str, tuple[str, str]] = {}
        self._providers: dict[str, Provider] = {}
        self._health: dict[str, _Health] = {}

    def provider(self, name: str) -> Provider:
        """The run's instance of provider ``name`` (its key checked on first use)."""
        if name not in self._providers:
            prov = create_provider(name, self.options.get(name))
            prov.check_ready()
            self._providers[name] = prov
        return self._providers[name]

    def mark_down(self, name: str, kind: str, message: str) -> None:
        """Stop calling ``name`` for the rest of the run."""
        self.down.setdefault(name, (kind, message))

    async def call(self, name: str, request: CompletionRequest) -> Completion:
        """One call; the first calls to an unproven provider go one at a time."""
        prov = self.provider(name)
        health = self._health.setdefault(name, _Health(proven=not prov.probe_first))
        if not health.proven:
            async with health.lock:
                if name in self.down:
                    raise _Down()  # the probe ahead of us found it down: no call made
                if not health.proven:
                    answer = await self._tracked(name, health, prov, request)
                    health.proven = True
                    return answer
        return await self._tracked(name, health, prov, request)

    async def _tracked(
        self, name: str, health: _Health, prov: Provider, request: CompletionRequest
    ) -> Completion:
        try:
            answer = await prov.complete(request)
        except ProviderError as exc:
            if exc.kind in TRANSIENT_KINDS:
                health.failures_in_a_row += 1
            raise
        health.failures_in_a_row = 0
        return answer

    def unhealthy(self, name: str) -> bool:
        """True when ``name`` failed transiently ``down_after`` calls in a row."""
        health = self._health.get(name)
        return health is not None and health.failures_in_a_row >= self.retry.down_after

    async def aclose(self) -> None:
        """Close every SDK client."""
        for prov in self._providers.values():
            await prov.aclose()
        self._providers.clear()


def _attempt_from(name: str, model: str, n: int, answer: Completion, ms: float) -> Attempt:
    return attempt_from(name, model, n, answer, ms)


def attempt_from(
    name: str, model: str, n: int, answer: Completion, ms: float, batch_id: str | None = None
) -> Attempt:
    """The ledger attempt of an answer, priced live or (with ``batch_id``) at the batch tier."""
    cost = price_for(name, answer.model or model).cost(
        answer.input_tokens,
        answer.output_tokens,
        answer.cached_input_tokens,
        answer.cache_write_tokens,
        batch=batch_id is not None,
    )
    return Attempt(
        provider=name,
        model=answer.model or model,
        attempt=n,
        outcome="ok",
        input_tokens=answer.input_tokens,
        output_tokens=answer.output_tokens,
        cached_input_tokens=answer.cached_input_tokens,
        cache_write_tokens=answer.cache_write_tokens,
        cost_usd=cost,
        latency_ms=ms,
        batch_id=batch_id,
        service_tier="live" if batch_id is None else "batch",
    )


def _rejection(answer: Completion) -> str | None:
    if answer.stop_reason == STOP_MAX_TOKENS:
        return "truncated"
    if answer.stop_reason == STOP_REFUSAL:
        return "refused"
    return None


class _Down(Exception):  # noqa: N818 - internal signal
    """The provider was marked down while this call waited for it."""


@dataclass(frozen=True)
class _Failure:
    kind: str
    message: str
    reported: bool = True  # False: skipped silently, another item already reported it


async def _try_provider(
    pool: ProviderPool, name: str, request: CompletionRequest, attempts: list[Attempt]
) -> Completion | _Failure:
    """Call one provider with retries: the accepted answer, or why it failed."""
    model = request.model or ""
    for n in range(1, pool.retry.max_attempts + 1):
        started = time.perf_counter()
        try:
            model = pool.provider(name).model_for(request)
            answer = await pool.call(name, request)
        except _Down:
            return _Failure(*pool.down[name], reported=False)
        except MissingKey as exc:
            pool.mark_down(name, "auth", str(exc))
            return _Failure("auth", str(exc))
        except ProviderError as exc:
            ms = (time.perf_counter() - started) * 1000
            attempts.append(Attempt(name, model, n, "error", exc.kind, exc.message, latency_ms=ms))
            if exc.kind in REFUSED_KINDS or pool.unhealthy(name):
                pool.mark_down(name, exc.kind, exc.message)
            if (
                exc.kind in TRANSIENT_KINDS
                and n < pool.retry.max_attempts
                and name not in pool.down
            ):
                await pool.sleep(pool.retry.delay(n, exc.retry_after))
                continue
            return _Failure(exc.kind, exc.message)
        record = _attempt_from(name, model, n, answer, (time.perf_counter() - started) * 1000)
        attempts.append(record)
        kind = _rejection(answer)
        if kind is None:
            return answer
        record.outcome, record.error_kind = "error", kind
        stop = answer.raw_stop_reason or answer.stop_reason
        record.error = f"answer {kind} (stop reason {stop})"
        return _Failure(kind, record.error)
    return _Failure("server", "retries exhausted")  # pragma: no cover - loop always returns


async def complete_with_fallback(
    pool: ProviderPool,
    chain: Sequence[str],
    request: CompletionRequest,
    *,
    cache: CacheLookup | None = None,
    on_fallback: FallbackHook | None = None,
) -> ChainResult:
    """Try each provider of ``chain`` in turn; raise :class:`ChainExhausted` if none answers."""
    attempts: list[Attempt] = []
    reasons: list[tuple[str, str, str]] = []
    entries = [parse_entry(e) for e in chain]
    for i, (name, model) in enumerate(entries):
        req = (
            request
            if model is None
            else CompletionRequest(
                request.system, request.messages, model, request.max_tokens, request.temperature
            )
        )
        if name in pool.down:
            reasons.append((name, *pool.down[name]))
            continue
        key = None
        if cache is not None:
            key, hit = cache(name, req.model or provider_class(name).default_model, req)
            if hit is not None:
                attempts.append(
                    Attempt(
                        name,
                        hit.model,
                        1,
                        "cached",
                        cached=True,
                        input_tokens=hit.input_tokens,
                        output_tokens=hit.output_tokens,
                    )
                )
                return ChainResult(hit, attempts, key, from_cache=True)
        outcome = await _try_provider(pool, name, req, attempts)
        if isinstance(outcome, Completion):
            return ChainResult(outcome, attempts, key)
        reasons.append((name, outcome.kind, outcome.message))
        if on_fallback is not None and outcome.reported:
            nxt = next((n for n, _ in entries[i + 1 :] if n not in pool.down), None)
            on_fallback(name, nxt, outcome.kind, outcome.message)
    raise ChainExhausted(reasons, attempts)
