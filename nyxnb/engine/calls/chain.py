"""The fallback chain: try providers in order, deciding by *why* a call failed.

- exhausted / auth / not_found (and a missing key): the provider is marked down for the rest of the
  run -- no later item calls it again -- and the next provider is tried at once;
- rate_limited (a 429 that is not exhaustion): recorded as an attempt, never counted against the
  item or the provider; the call waits for the provider+model's governor
  (:mod:`nyxnb.engine.calls.governor`) and goes again, until ``RetryPolicy.max_wait_s`` of waiting,
  then the next provider;
- overloaded / server / timeout / connection / empty answers: bounded retries with backoff
  (honouring retry-after), then the next provider (a timeout moves on at once when there is
  one); a provider that fails like this ``RetryPolicy.down_after`` times in a row *over time* is
  marked down too (a circuit breaker over time: only failed retries count, and a call that was
  already in flight when another failed does not add to the count, so a burst of concurrent
  failures, or every item's first call failing once, never trips it);
- truncated / refused answers and bad_request / context_too_long: never accepted; next provider.

Until a provider has answered once in a run, only one call at a time may go to it (a probe), so
a provider that is out of credit is called once per run, not once per concurrent item.  A call
that gets no byte at all within its first-byte timeout finds the provider hung: it is marked down
for the run (when a fallback is left), so every item waiting for it moves on at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from nyxnb.engine.calls.budget import SharedBudget
from nyxnb.engine.calls.governor import Governor, Governors, Limits, Ticket, WaitTooLong
from nyxnb.engine.outcomes import Attempt, ChainResult
from nyxnb.errors import ChainExhausted, ErrorKind, MissingKey, PartialUsage, ProviderError
from nyxnb.providers import structured
from nyxnb.providers.base import (
    REFUSED_KINDS,
    STOP_END,
    STOP_MAX_TOKENS,
    STOP_REFUSAL,
    TRANSIENT_KINDS,
    Completion,
    CompletionRequest,
    Provider,
)
from nyxnb.providers.endpoints import Table, split_entry
from nyxnb.providers.params import served_tier
from nyxnb.providers.pricing import BY_NAME, price_for
from nyxnb.providers.registry import create_provider, default_model


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient failures, per provider and call (the SDKs' own retries are off)."""

    max_attempts: int = 3
    initial_delay_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 20.0
    max_retry_after_s: float = 60.0
    down_after: int = 3
    max_wait_s: float = 600.0  # waiting for rate limits, per item and provider, before falling back

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        return min(self.initial_delay_s * self.multiplier ** (attempt - 1), self.max_delay_s)


@dataclass
class _Health:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proven: bool = False
    failures_in_a_row: int = 0
    last_failure: float = float("-inf")  # monotonic time of the last counted failure

    def failed(self, started: float) -> None:
        """Count a failure unless its call began before the last counted one (a burst)."""
        if started > self.last_failure:
            self.failures_in_a_row += 1
            self.last_failure = time.monotonic()

    def succeeded(self) -> None:
        self.failures_in_a_row = 0


CacheLookup = Callable[[str, str, CompletionRequest], tuple[str, Completion | None]]
FallbackHook = Callable[[str, "str | None", str, str], None]
#: (provider, model, seconds waited or to wait, limits in force) when a call waits for its budget
RateHook = Callable[[str, str, float, Limits], None]
_BREAKER_KINDS = TRANSIENT_KINDS - {"rate_limited"}


@lru_cache(maxsize=1024)
def parse_entry(entry: str) -> tuple[str, str | None]:
    """Split a chain entry: ``"google:gemini-2.5-pro"`` -> ("google", "gemini-2.5-pro").

    (:func:`~nyxnb.providers.endpoints.split_entry`, remembered: every call of a run parses
    its step's chain.)
    """
    return split_entry(entry)


class ProviderPool:
    """Provider instances and their health for one run."""

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        options: dict[str, dict[str, object]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limits: dict[str, Limits] | None = None,
        shared: SharedBudget | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.options = options or {}
        self.sleep = sleep
        self.governors = Governors(limits, shared=shared)
        self.timeouts: dict[str, float] = {}
        self.endpoints: Table = {}
        self.down: dict[str, tuple[ErrorKind, str]] = {}
        self._providers: dict[str, Provider] = {}
        self._health: dict[str, _Health] = {}

    def apply_spec(
        self,
        limits: dict[str, Limits],
        timeouts: dict[str, float],
        max_wait_s: float,
        endpoints: Table | None = None,
    ) -> None:
        """Take a spec's ``defaults.limits``, ``defaults.timeouts``, ``max_wait_s`` and endpoints.

        Options given to the pool (the API's ``provider_options``, the CLI) win over the spec.
        """
        self.endpoints = dict(endpoints or {})
        self.governors.configure(limits)
        self.timeouts = dict(timeouts)
        self.retry = replace(self.retry, max_wait_s=max_wait_s)

    def _options(self, name: str) -> dict[str, object] | None:
        options = dict(self.options.get(name) or {})
        timeout = self.timeouts.get(name, self.timeouts.get("default"))
        if timeout is not None:
            options.setdefault("timeout_s", timeout)
        return options or None

    def provider(self, name: str) -> Provider:
        """The run's instance of provider ``name`` (its key checked on first use)."""
        if name not in self._providers:
            prov = create_provider(name, self._options(name), self.endpoints)
            prov.check_ready()
            self._providers[name] = prov
        return self._providers[name]

    def mark_down(self, name: str, kind: ErrorKind, message: str) -> None:
        """Stop calling ``name`` for the rest of the run."""
        self.down.setdefault(name, (kind, message))

    def health(self, name: str) -> _Health:
        """The health of provider ``name`` in this run."""
        if name not in self._health:
            self._health[name] = _Health(proven=not self.provider(name).probe_first)
        return self._health[name]

    async def call(self, name: str, request: CompletionRequest, retry: bool = False) -> Completion:
        """One call (the probe gating is the chain's: see :func:`_try_provider`).

        Only a failed *retry* counts toward the circuit breaker: first calls failing together
        are a blip that each item's retry rides out.
        """
        health = self.health(name)
        answer = await self._tracked(health, self.provider(name), request, retry)
        health.proven = True
        return answer

    async def _tracked(
        self, health: _Health, prov: Provider, request: CompletionRequest, retry: bool
    ) -> Completion:
        started = time.monotonic()
        try:
            answer = await prov.complete(request)
        except ProviderError as exc:
            if exc.kind in _BREAKER_KINDS and retry:
                health.failed(started)
            raise
        if answer.text.strip() or answer.stop_reason != STOP_END:
            health.succeeded()
        elif retry:
            health.failed(started)  # an empty answer is a transient failure of the provider
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


def _attempt_from(call: _Call, model: str, n: int, answer: Completion, ms: float) -> Attempt:
    prov = call.pool.provider(call.name)
    tier = served_tier(type(prov).name, call.request.service_tier, answer.service_tier)
    attempt = attempt_from(call.name, model, n, answer, ms, prices_as=prov.prices_as, tier=tier)
    if call.request.keep_thinking and answer.thinking:
        attempt.thinking = answer.thinking
    return attempt


def attempt_from(
    name: str,
    model: str,
    n: int,
    answer: Completion,
    ms: float,
    batch_id: str | None = None,
    *,
    prices_as: str | None | object = BY_NAME,
    tier: str | None = None,
) -> Attempt:
    """The ledger attempt of an answer, priced live or (with ``batch_id``) at the batch tier.

    ``tier`` (the service tier the provider served, e.g. ``flex``) picks that tier's rates;
    ``prices_as`` is the endpoint's genai-prices id (default: the built-in provider ``name``).
    """
    cost = price_for(name, answer.model or model, prices_as=prices_as, tier=tier).cost(
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
        api_tier=tier,
        reasoning_tokens=answer.reasoning_tokens,
    )


def _rejection(answer: Completion, request: CompletionRequest) -> tuple[ErrorKind, str] | None:
    """(error kind, message) when an answer cannot be accepted, else None."""
    stop = answer.raw_stop_reason or answer.stop_reason
    if answer.stop_reason == STOP_MAX_TOKENS:
        return ErrorKind.TRUNCATED, f"answer truncated (stop reason {stop})"
    if answer.stop_reason == STOP_REFUSAL:
        return ErrorKind.REFUSED, f"answer refused (stop reason {stop})"
    if not answer.text.strip():
        return ErrorKind.EMPTY, f"answer empty (stop reason {stop})"
    if request.output_schema is not None:
        reason = structured.invalid_reason(answer.text, request.output_schema)
        if reason is not None:
            return ErrorKind.INVALID_OUTPUT, reason
    return None


@dataclass(frozen=True)
class _Failure:
    kind: ErrorKind
    message: str
    reported: bool = True  # False: skipped silently, another item already reported it


@dataclass
class _Call:
    """One provider's share of a chain: its attempts so far and its time spent waiting."""

    pool: ProviderPool
    name: str
    request: CompletionRequest
    attempts: list[Attempt]
    last: bool
    on_rate: RateHook | None
    waited_s: float = 0.0
    tries: int = 0

    def record(self, model: str, exc: ProviderError, ms: float) -> None:
        n = len([a for a in self.attempts if a.provider == self.name]) + 1
        attempt = Attempt(self.name, model, n, "error", exc.kind, exc.message, latency_ms=ms)
        if exc.partial is not None:  # cut mid-answer: the provider bills what it read and wrote
            self._bill_partial(attempt, exc.partial)
        self.attempts.append(attempt)

    def _bill_partial(self, attempt: Attempt, partial: PartialUsage) -> None:
        """Tokens and cost of a cut call (input unknown: estimated at 4 characters a token)."""
        read = partial.input_tokens
        attempt.input_tokens = _chars(self.request) // 4 if read is None else read
        attempt.output_tokens = partial.output_tokens
        prices_as = self.pool.provider(self.name).prices_as
        price = price_for(self.name, attempt.model, prices_as=prices_as)
        attempt.cost_usd = price.cost(attempt.input_tokens, attempt.output_tokens)

    def report(self, gov: Governor, wait_s: float) -> None:
        if self.on_rate is not None and self.pool.governors.should_report(gov.provider, gov.model):
            self.on_rate(gov.provider, gov.model, wait_s, gov.current())


def _chars(request: CompletionRequest) -> int:
    return len(request.system) + sum(len(m.content) for m in request.messages)


async def _try_provider(call: _Call) -> Completion | _Failure:
    """Call one provider with retries: the accepted answer, or why it failed.

    Until a provider has answered once in a run, one item at a time tries it, with its retries
    (a probe): a provider out of credit is then called once per run, its first answer teaches
    the governor its limits before anyone else is admitted, and a first 503 is retried by its
    own item rather than counted again by every waiting item.
    """
    try:
        health = call.pool.health(call.name)
    except MissingKey as exc:
        call.pool.mark_down(call.name, ErrorKind.AUTH, str(exc))
        return _Failure(ErrorKind.AUTH, str(exc))
    if not health.proven:
        async with health.lock:
            if call.name in call.pool.down:  # the probe ahead of us found it down: no call
                return _Failure(*call.pool.down[call.name], reported=False)
            if not health.proven:
                return await _tries(call)
    return await _tries(call)


async def _tries(call: _Call) -> Completion | _Failure:
    pool, name, request = call.pool, call.name, call.request
    while True:
        try:
            model = pool.provider(name).model_for(request)
        except MissingKey as exc:
            pool.mark_down(name, ErrorKind.AUTH, str(exc))
            return _Failure(ErrorKind.AUTH, str(exc))
        gov = pool.governors.get(name, model)
        try:
            ticket = await gov.acquire(
                gov.estimate(_chars(request), request.max_tokens),
                pool.retry.max_wait_s - call.waited_s,
            )
        except WaitTooLong as exc:
            return _Failure(ErrorKind.RATE_LIMITED, _too_long(pool.retry.max_wait_s, exc.hold_s))
        call.waited_s += ticket.waited_s
        if ticket.waited_s >= 1.0:
            call.report(gov, ticket.waited_s)
        outcome = await _attempt(call, gov, ticket, model)
        if outcome is not None:
            return outcome


def _too_long(max_wait_s: float, hold_s: float) -> str:
    """Why a rate-limited item falls back, and when the provider said its limit resets."""
    if hold_s <= 0:
        return f"still rate limited after waiting {max_wait_s:g} s (max_wait_s)"
    at = datetime.now(UTC) + timedelta(seconds=hold_s)
    return (
        f"rate limited: the limit resets in {_human(hold_s)} (at {at:%Y-%m-%d %H:%M:%S} UTC), "
        f"past max_wait_s ({max_wait_s:g} s)"
    )


def _human(seconds: float) -> str:
    """``7m12s``, ``3h5m``, ``8.6s``."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if hours else f"{minutes}m{secs}s"


async def _attempt(call: _Call, gov: Governor, ticket: Ticket, model: str) -> _Outcome:
    """One admitted call; None means "go again"."""
    pool, name = call.pool, call.name
    started = time.perf_counter()
    try:
        answer = await pool.call(name, call.request, retry=call.tries > 0)
    except ProviderError as exc:
        ms = (time.perf_counter() - started) * 1000
        call.record(model, exc, ms)
        if exc.kind == "rate_limited":
            await gov.throttled(ticket, exc.rate, exc.retry_after)
            call.report(gov, gov.held_for())
            if gov.held_for() > pool.retry.max_wait_s - call.waited_s:  # a quota hours away
                too_long = _too_long(pool.retry.max_wait_s, gov.held_for())
                return _Failure(ErrorKind.RATE_LIMITED, too_long)
            return None  # waiting is not an attempt: no retry is used up
        await gov.failed(ticket)
        return await _after_failure(call, exc)
    except BaseException:
        await gov.failed(ticket)
        raise
    tokens = (answer.input_tokens, answer.output_tokens)
    await gov.succeeded(ticket, answer.rate, *tokens, _chars(call.request))
    return await _judge(call, model, answer, started)


async def _after_failure(call: _Call, exc: ProviderError) -> _Outcome:
    pool, name = call.pool, call.name
    call.tries += 1
    if exc.kind in REFUSED_KINDS or pool.unhealthy(name):
        pool.mark_down(name, exc.kind, exc.message)
    if exc.hung and not call.last:  # no byte at all: one hung call is enough to know
        pool.mark_down(name, exc.kind, f"hung: {exc.message}")
    moves_on = exc.kind == "timeout" and not call.last  # fall back at once
    if (
        exc.kind in TRANSIENT_KINDS
        and call.tries < pool.retry.max_attempts
        and name not in pool.down
        and not moves_on
    ):
        await pool.sleep(pool.retry.delay(call.tries, exc.retry_after))
        return None
    return _Failure(exc.kind, exc.message)


async def _judge(call: _Call, model: str, answer: Completion, started: float) -> _Outcome:
    """Accept an answer, or record why not (an empty answer is retried like a 5xx)."""
    pool, name = call.pool, call.name
    n = len([a for a in call.attempts if a.provider == name]) + 1
    record = _attempt_from(call, model, n, answer, (time.perf_counter() - started) * 1000)
    call.attempts.append(record)
    rejected = _rejection(answer, call.request)
    if rejected is None:
        return _accepted(answer, call.request)
    kind, record.error = rejected
    record.outcome, record.error_kind = "error", kind
    if kind in _RETRIED_ANSWERS:
        call.tries += 1
        if pool.unhealthy(name):
            pool.mark_down(name, ErrorKind.SERVER, "empty answers")
        elif call.tries < pool.retry.max_attempts:
            await pool.sleep(pool.retry.delay(call.tries, None))
            return None
    return _Failure(kind, record.error)


_Outcome = Completion | _Failure | None
#: Unusable answers asked again of the same provider (bounded by ``max_attempts``) before moving on.
_RETRIED_ANSWERS = frozenset({ErrorKind.EMPTY, ErrorKind.INVALID_OUTPUT})


def _accepted(answer: Completion, request: CompletionRequest) -> Completion:
    """The answer as stored: a structured answer is kept as its validated JSON, compacted."""
    if request.output_schema is None:
        return answer
    return replace(answer, text=structured.normalised(answer.text))


async def complete_with_fallback(
    pool: ProviderPool,
    chain: Sequence[str],
    request: CompletionRequest,
    *,
    cache: CacheLookup | None = None,
    on_fallback: FallbackHook | None = None,
    on_rate_limited: RateHook | None = None,
) -> ChainResult:
    """Try each provider of ``chain`` in turn; raise :class:`ChainExhausted` if none answers."""
    attempts: list[Attempt] = []
    reasons: list[tuple[str, str, str]] = []
    entries = [parse_entry(e) for e in chain]
    for i, (name, model) in enumerate(entries):
        req = request.with_model(model)
        if name in pool.down:
            reasons.append((name, *pool.down[name]))
            continue
        key = None
        if cache is not None:
            key, hit = cache(name, req.model or default_model(name, pool.endpoints), req)
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
        last = all(n in pool.down for n, _ in entries[i + 1 :])
        outcome = await _try_provider(_Call(pool, name, req, attempts, last, on_rate_limited))
        if isinstance(outcome, Completion):
            return ChainResult(outcome, attempts, key)
        reasons.append((name, outcome.kind, outcome.message))
        if on_fallback is not None and outcome.reported:
            nxt = next((n for n, _ in entries[i + 1 :] if n not in pool.down), None)
            on_fallback(name, nxt, outcome.kind, outcome.message)
    raise ChainExhausted(reasons, attempts)
