"""What a step executor needs from its run: prompts, requests, the fallback chain, events, failure.

:class:`RunContext` is the part of a run that the step executors (:mod:`nyxnb.engine.fanout`,
the runner's own single-call and pattern-check steps) share; :class:`~nyxnb.engine.runner.Runner`
extends it with the lifecycle and the step loop, so executors never import the runner.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import func, select

from nyxnb import events as ev
from nyxnb.engine import telemetry
from nyxnb.engine.calls.chain import ProviderPool, RetryPolicy, complete_with_fallback
from nyxnb.engine.calls.governor import Limits
from nyxnb.engine.durable import cache as response_cache
from nyxnb.engine.durable import lease, records
from nyxnb.engine.durable.gateway import Gateway
from nyxnb.engine.durable.items import write_items
from nyxnb.engine.durable.rows import ItemRows, StepRow
from nyxnb.engine.durable.writer import GroupWriter
from nyxnb.engine.outcomes import Attempt, ChainResult
from nyxnb.engine.workers.claims import ItemClaimer
from nyxnb.errors import ChainExhausted, NotFound, RunError, StepFailed, one_line
from nyxnb.providers import structured
from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.endpoints import cache_identity, split_entry
from nyxnb.providers.pricing import price_for
from nyxnb.providers.registry import default_model
from nyxnb.providers.streaming import PROGRESS, ProgressHook, StreamProgress
from nyxnb.spec import WorkflowSpec
from nyxnb.store import Database
from nyxnb.store.holders import new_owner
from nyxnb.store.models import COMPLETED, LlmCall
from nyxnb.templates import ItemView, ProjectView, StepsView, StepView, render

Emit = Callable[[ev.Event], None]


def estimate_usd(
    provider: str, model: str, request: CompletionRequest, *, batch: bool = False
) -> float:
    """What a request may cost at most: input at 4 characters a token, ``max_tokens`` out.

    The price of a 'sent' ledger row, written before the call (or the batch) is made.
    """
    tokens = (len(request.system) + sum(len(m.content) for m in request.messages)) // 4
    return price_for(provider, model).cost(tokens, request.max_tokens, batch=batch)


class Paused(Exception):  # noqa: N818 - a signal, not an error
    """Internal signal: stop cooperatively; the workflow is resumable."""


def request_hash(kind: str, request: CompletionRequest) -> str:
    """Input hash of an LLM step or item: what was asked, of whom, with which limits."""
    payload: list[Any] = [
        kind,
        request.system,
        [[m.role, m.content] for m in request.messages],
        request.model,
        request.max_tokens,
        request.temperature,
    ]
    knobs = response_cache.call_knobs(request)
    if knobs:  # only when set: a workflow from before call settings keeps its hashes
        payload.append(knobs)
    if request.output_schema is not None:
        payload.append(structured.schema_text(request.output_schema))
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def call_settings(step: StepRow, spec: WorkflowSpec) -> dict[str, Any]:
    """The request fields of a step's call settings, each from the step or else ``defaults``."""
    c, d = step.config, spec.defaults
    reasoning = c.reasoning or d.reasoning
    stop = c.stop if c.stop is not None else d.stop
    keep = c.keep_thinking if c.keep_thinking is not None else d.keep_thinking
    return {
        "temperature": c.temperature if c.temperature is not None else d.temperature,
        "top_p": c.top_p if c.top_p is not None else d.top_p,
        "stop": tuple(stop or ()),
        "seed": c.seed if c.seed is not None else d.seed,
        "service_tier": c.service_tier or d.service_tier,
        "reasoning_effort": reasoning.effort if reasoning else None,
        "reasoning_budget": reasoning.budget_tokens if reasoning else None,
        "keep_thinking": bool(keep),
    }


@dataclass(frozen=True)
class RunConfig:
    """How one run executes: fixed when its runner is built, never changed after."""

    retry: RetryPolicy | None = None
    provider_options: Mapping[str, Mapping[str, object]] | None = None
    tenant_id: str | None = None
    #: The lease owner token; a worker passes the one it claimed the workflow with.
    owner: str | None = None
    #: How long the run's lease outlives a renewal (a worker: its claim TTL, faster takeover).
    lease_ttl_s: float = lease.TTL_S
    #: A worker's item claims: fan-out items then come through claims shared with other workers.
    claimer: ItemClaimer | None = None
    #: A worker's concurrency, over the spec's.
    fan_out_limit: int | None = None
    #: False for a worker helping another's fan-out: it holds item claims, not the run's lease.
    fenced: bool = True


@dataclass
class Totals:
    """What a run has spent so far (its ``workflow_completed`` event reports it)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class RunContext:
    """The services of one run that step executors use (set up by the runner)."""

    workflow_id: str
    tenant_id: str | None
    spec: WorkflowSpec
    project: ProjectView
    personas: dict[str, str]
    pool: ProviderPool

    def __init__(self, store: Database, workflow_id: str, config: RunConfig, *, emit: Emit) -> None:
        self.workflow_id, self.config, self._emit = workflow_id, config, emit
        self.owner = config.owner or new_owner()
        #: The run's one way to the database: its writes are fenced by its lease (refused once
        #: another run took over); no raw engine to write around the fence.
        gateway = Gateway.of(store)
        self.store: Gateway = gateway.fenced(workflow_id, self.owner) if config.fenced else gateway
        self.pause_event = asyncio.Event()
        self.ctx: dict[str, StepView] = {}
        self.totals = Totals()
        claimer = config.claimer
        self.writer = GroupWriter(self.store, claimer.write_batch if claimer else write_items)
        self._sent: dict[tuple[str, int | None], str] = {}
        self._limited_steps: set[str] = set()
        self._progress_at: dict[str, float] = {}  # step -> when its last Generating was sent
        self.executed_steps = 0  # steps this run executed (not skipped as already done)

    def emit(self, event: ev.Event) -> None:
        """Send an event to the consumer."""
        self._emit(event)

    def check_pause(self) -> None:
        """Raise :class:`Paused` if a pause was requested."""
        if self.pause_event.is_set():
            raise Paused()

    def system_prompt(self, step: StepRow) -> str:
        """The persona's system prompt for a step ('' without a persona)."""
        if step.persona is None:
            return ""
        if step.persona not in self.personas:
            raise NotFound("persona", step.persona, hint="run `nyxnb seed` or add the persona")
        return self.personas[step.persona]

    def render(self, step: StepRow, item: ItemView | None = None) -> str:
        """Render a step's prompt; any error while rendering fails the step with one line.

        A template can raise anything at render time (``{{ 1/0 }}``, ``{{ project.name + 1 }}``),
        not only :class:`TemplateError`.
        """
        try:
            return render(step.prompt, project=self.project, steps=StepsView(self.ctx), item=item)
        except Exception as exc:  # noqa: BLE001 - user code: whatever it raises fails the step
            detail = str(exc) if isinstance(exc, TemplateError) else one_line(exc)
            err = StepFailed(
                f"prompt template: {detail}", workflow_id=self.workflow_id, step=step.name
            )
            raise self.fail(step, err) from None

    def request(self, step: StepRow, prompt: str) -> CompletionRequest:
        """The provider request for a rendered prompt."""
        return CompletionRequest.of(
            self.system_prompt(step),
            prompt,
            model=step.model,
            max_tokens=step.config.max_tokens or self.spec.defaults.max_tokens,
            **call_settings(step, self.spec),
            output_schema=step.config.output_schema,
        )

    def _cache_lookup(
        self, provider: str, model: str, request: CompletionRequest
    ) -> tuple[str, Any]:
        identity = cache_identity(provider, self.pool.endpoints)
        key = response_cache.cache_key(identity, model, request)
        if not self.spec.defaults.share_cache:  # one tenant never learns what another asked
            key = hashlib.sha256(f"tenant:{self.tenant_id}:{key}".encode()).hexdigest()
        with self.store.reading() as conn:
            return key, response_cache.lookup(conn, key)

    async def call(
        self, step: StepRow, request: CompletionRequest, item_idx: int | None = None
    ) -> ChainResult:
        """Run the fallback chain for one request, emitting fallback events."""

        def on_fallback(src: str, dst: str | None, kind: str, message: str) -> None:
            self.emit(
                ev.ProviderFallback(
                    *self.at(step),
                    from_provider=src,
                    to_provider=dst,
                    reason=kind,
                    message=message[:300],
                    item_index=item_idx,
                )
            )

        if (step.id, item_idx) not in self._sent:  # not reserved ahead (fan-out)
            await self._record_sent(step, request, item_idx)

        def on_rate_limited(provider: str, model: str, wait_s: float, limits: Limits) -> None:
            self.emit(
                ev.RateLimited(
                    *self.at(step),
                    provider=provider,
                    model=model,
                    wait_s=round(wait_s, 3),
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                    concurrency=limits.concurrency,
                    item_index=item_idx,
                )
            )

        self._step_limits(step)
        watching = PROGRESS.set(self._progress_hook(step, item_idx))
        try:
            return await self._call(step, request, on_fallback, on_rate_limited, item_idx)
        finally:
            PROGRESS.reset(watching)

    def _progress_hook(self, step: StepRow, item_idx: int | None) -> ProgressHook:
        """Streamed progress of one call as ``Generating`` events, one a second per step."""

        def on_progress(p: StreamProgress) -> None:
            now = time.monotonic()
            if not p.waiting and now - self._progress_at.get(step.name, 0.0) < 1.0:
                return
            self._progress_at[step.name] = now
            self.emit(
                ev.Generating(
                    *self.at(step),
                    provider=p.provider,
                    model=p.model,
                    tokens=p.tokens,
                    tokens_per_s=round(p.tokens_per_s, 1),
                    waiting_s=round(p.elapsed_s, 1) if p.waiting else None,
                    first_byte_s=p.first_byte_s,
                    item_index=item_idx,
                )
            )

        return on_progress

    async def _call(
        self,
        step: StepRow,
        request: CompletionRequest,
        on_fallback: Any,
        on_rate_limited: Any,
        item_idx: int | None,
    ) -> ChainResult:
        prompt = request.messages[0].content
        with telemetry.call_span(
            self.workflow_id, step.name, step.chain, step.model, item_idx, prompt
        ) as span:
            result = await complete_with_fallback(
                self.pool,
                step.chain,
                request,
                cache=self._cache_lookup if self.spec.defaults.cache else None,
                on_fallback=on_fallback,
                on_rate_limited=on_rate_limited,
            )
            if span is not None:
                telemetry.record(
                    span,
                    provider=result.completion.provider,
                    model=result.completion.model,
                    input_tokens=sum(a.input_tokens for a in result.attempts),
                    output_tokens=sum(a.output_tokens for a in result.attempts),
                    attempts=len(result.attempts),
                )
        self.count(result.attempts)
        return result

    def _sent_row(
        self, step: StepRow, request: CompletionRequest, item_idx: int | None
    ) -> dict[str, Any]:
        name, entry_model = split_entry(step.chain[0])
        model = request.model or entry_model or default_model(name, self.pool.endpoints)
        usd = estimate_usd(name, model, request)
        return records.sent_row(step, item_idx, name, model, usd)

    async def _record_sent(
        self, step: StepRow, request: CompletionRequest, item_idx: int | None
    ) -> None:
        """Commit an ``outcome='sent'`` ledger row before the call (group-committed)."""
        await self.reserve_sent(step, [(item_idx, request)])

    async def reserve_sent(
        self,
        step: StepRow,
        calls: Sequence[tuple[int | None, CompletionRequest]],
        *,
        urgent: bool = True,
    ) -> None:
        """Commit the 'sent' rows of calls in one write before they are made (a fan-out
        reserves a block of items ahead while other calls run).

        :meth:`call` then starts at once; the database stays off the calls' critical path.  A
        reservation never used (a pause) is taken back with :meth:`take_sent`.  Not ``urgent``:
        the rows join the next group commit (a fan-out reserving ahead; it hurries the writer
        when a call waits for them).
        """
        rows = [self._sent_row(step, request, idx) for idx, request in calls]
        await self.writer.write(ItemRows(rows, None, None), urgent=urgent)
        for (idx, _), row in zip(calls, rows, strict=True):
            self._sent[(step.id, idx)] = row["id"]

    def take_sent(self, step: StepRow, item_idx: int | None = None) -> str | None:
        """The id of the 'sent' row of a call that has now finished (its rows complete it)."""
        return self._sent.pop((step.id, item_idx), None)

    def _step_limits(self, step: StepRow) -> None:
        """A step's own ``limits:`` apply from its first call on."""
        if step.name in self._limited_steps:  # looked up once per step, not once per call
            return
        self._limited_steps.add(step.name)
        spec = next((s for s in self.spec.steps if s.name == step.name), None)
        if spec is not None and spec.limits:
            self.pool.governors.configure({k: Limits.of(v) for k, v in spec.limits.items()})

    def count(self, attempts: list[Attempt]) -> None:
        """Add attempts to the run's token and cost totals."""
        for a in attempts:
            self.totals.input_tokens += a.input_tokens
            self.totals.output_tokens += a.output_tokens
            self.totals.cost_usd += a.cost_usd

    def spent_usd(self) -> float:
        """What this workflow has cost so far, across runs."""
        query = select(func.coalesce(func.sum(LlmCall.cost_usd), 0.0)).where(
            LlmCall.workflow_id == self.workflow_id
        )
        with self.store.reading() as conn:
            return float(conn.scalar(query) or 0.0)

    def at(self, step: StepRow) -> tuple[str, str, int, str]:
        """The fields every step event opens with: ``ev.StepCompleted(*ctx.at(step), ...)``."""
        return (self.workflow_id, step.name, step.order, step.type)

    def skip_if_done(self, step: StepRow, digest: str, view: StepView) -> bool:
        """Skip a completed step whose inputs are unchanged (and remember its output)."""
        if step.status != COMPLETED or step.input_hash != digest or step.output is None:
            self.executed_steps += 1
            return False
        self.ctx[step.name] = view
        self.emit(ev.StepCompleted(*self.at(step), skipped=True))
        return True

    def fail(
        self,
        step: StepRow,
        error: StepFailed | ChainExhausted | RunError,
        attempts: list[Attempt] | None = None,
        item_idx: int | None = None,
    ) -> StepFailed:
        """Record a failed step, emit ``step_failed``, and return the error to raise."""
        sent = self.take_sent(step, item_idx)
        records.fail_step(self.store, step, str(error), attempts or [], item_idx, sent)
        self.emit(ev.StepFailed(*self.at(step), error=str(error), item_index=item_idx))
        if isinstance(error, StepFailed):
            return error
        return StepFailed(str(error), workflow_id=self.workflow_id, step=step.name, item=item_idx)
