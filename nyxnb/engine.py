"""The run loop: steps in order, generated steps after the user's, crash-safe resume, pause.

Resume rule (the original system's bug cannot recur): every step that is not ``completed`` runs,
in order, whatever the state of later steps; a completed step is skipped only if its input hash
is unchanged; a step is marked completed only together with its non-null output.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import func, select

from . import cache as response_cache
from . import events as ev
from . import lease, records
from .chain import Attempt, ChainResult, ProviderPool, RetryPolicy, complete_with_fallback
from .errors import ChainExhausted, NotFound, NyxError, RunError, StepFailed
from .generated import desired_generated, generated_rows
from .models import (
    COMPLETED,
    FAILED,
    PAUSED,
    RUNNING,
    LlmCall,
    Project,
    Tenant,
    Workflow,
    utcnow,
)
from .patterncheck import check_code, load_patterns
from .providers.base import CompletionRequest
from .spec import WorkflowSpec
from .store import Store
from .templates import ItemView, ProjectView, StepsView, StepView, render
from .workflows import personas_for
from .writer import GroupWriter

Emit = Callable[[ev.Event], None]
PAUSE_POLL_S = 0.25  # how soon a pause asked from another process (or `nyxnb pause`) is seen


class Paused(Exception):  # noqa: N818 - a signal, not an error
    """Internal signal: stop cooperatively; the workflow is resumable."""


def request_hash(kind: str, request: CompletionRequest) -> str:
    """Input hash of an LLM step or item: what was asked, of whom, with which limits."""
    payload = [
        kind,
        request.system,
        [[m.role, m.content] for m in request.messages],
        request.model,
        request.max_tokens,
        request.temperature,
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


class Runner:
    """Executes one workflow under its lease, emitting events."""

    def __init__(
        self,
        store: Store,
        workflow_id: str,
        *,
        emit: Emit,
        retry: RetryPolicy | None = None,
        provider_options: dict[str, dict[str, object]] | None = None,
        tenant_id: str | None = None,
    ) -> None:
        self.store, self.workflow_id, self._emit = store, workflow_id, emit
        self.pool = ProviderPool(retry, provider_options)
        self.tenant_id = tenant_id
        self.pause_event = asyncio.Event()
        self.ctx: dict[str, StepView] = {}
        self.totals: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        self._owner = lease.new_owner()
        self.writer = GroupWriter(store)

    # -- lifecycle -------------------------------------------------------------------------
    async def execute(self) -> None:
        """Run the workflow to completion, pause or failure; never leaves the lease behind."""
        self._load()
        lease.acquire(self.store, self.workflow_id, self._owner, tenant_id=self.tenant_id)
        heartbeat = asyncio.create_task(self._heartbeat())
        started = time.perf_counter()
        try:
            await self._started()
            await self._run_all()
        except Paused:
            self._finish(PAUSED, None)
            self.emit(ev.WorkflowPaused(self.workflow_id, name=self.name))
        except asyncio.CancelledError:  # Ctrl-C or a consumer that stopped listening
            records.reset_running_steps(self.store, self.workflow_id)
            self._finish(PAUSED, None)
            self.emit(ev.WorkflowPaused(self.workflow_id, name=self.name))
            raise
        except NyxError as exc:
            self._finish(FAILED, str(exc))
            failed = [n for n, s in self._statuses().items() if s == FAILED]
            self.emit(
                ev.WorkflowFailed(
                    self.workflow_id, name=self.name, error=str(exc), failed_steps=failed
                )
            )
        else:
            self._finish(COMPLETED, None)
            self.emit(
                ev.WorkflowCompleted(
                    self.workflow_id,
                    name=self.name,
                    seconds=time.perf_counter() - started,
                    **self.totals,
                )
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self.writer.close()
            lease.release(self.store, self.workflow_id, self._owner)
            await self.pool.aclose()

    def _load(self) -> None:
        with self.store.session(self.tenant_id) as s:
            wf = s.get_one(Workflow, self.workflow_id)
            project = s.get_one(Project, wf.project_id)
            self.tenant_id, self.name, self.status = wf.tenant_id, wf.name, wf.status
            self.tenant_slug = s.get_one(Tenant, wf.tenant_id).slug
            self.spec = WorkflowSpec.model_validate(wf.spec)
            self.project = ProjectView(project.name, project.description)
        self.personas = personas_for(self.store, self.tenant_id)

    async def _started(self) -> None:
        records.update_workflow(
            self.store,
            self.workflow_id,
            status=RUNNING,
            error=None,
            pause_requested=False,
            started_at=utcnow(),
            finished_at=None,
        )
        steps = records.load_steps(self.store, self.workflow_id)
        self.emit(
            ev.WorkflowStarted(
                self.workflow_id,
                name=self.name,
                project=self.project.name,
                tenant=self.tenant_slug,
                resumed=self.status != "pending",
                total_steps=max(len(steps), self._expected_steps()),
            )
        )

    def _expected_steps(self) -> int:
        """User steps plus the generated ones, when the spec lets us count them up front."""
        generate = self.spec.generate
        count = len(self.spec.steps) + (1 if generate.consistency_check else 0)
        if generate.implementation_prompts is not None:
            source = self.spec.step(generate.implementation_prompts.from_)
            count += len(source.items or [])
        return count

    def _finish(self, status: str, error: str | None) -> None:
        records.update_workflow(
            self.store,
            self.workflow_id,
            status=status,
            error=error,
            pause_requested=False,
            finished_at=utcnow(),
        )

    async def _heartbeat(self) -> None:
        """Renew the lease every HEARTBEAT_S; look for a pause request every PAUSE_POLL_S."""
        renewed = time.monotonic()
        query = select(Workflow.pause_requested).where(Workflow.id == self.workflow_id)
        while True:
            await asyncio.sleep(PAUSE_POLL_S)
            if time.monotonic() - renewed >= lease.HEARTBEAT_S:
                renewed = time.monotonic()
                if not lease.renew(self.store, self.workflow_id, self._owner):
                    self.pause_event.set()  # lost the lease: stop launching work
                    return
            with self.store.reading() as conn:
                if conn.scalar(query):
                    self.pause_event.set()

    def _statuses(self) -> dict[str, str]:
        return {s["name"]: s["status"] for s in records.load_steps(self.store, self.workflow_id)}

    # -- helpers used by step executors ---------------------------------------------------
    def emit(self, event: ev.Event) -> None:
        """Send an event to the consumer."""
        self._emit(event)

    def check_pause(self) -> None:
        """Raise :class:`Paused` if a pause was requested."""
        if self.pause_event.is_set():
            raise Paused()

    def system_prompt(self, step: dict[str, Any]) -> str:
        """The persona's system prompt for a step ('' without a persona)."""
        persona = step.get("persona")
        if persona is None:
            return ""
        if persona not in self.personas:
            raise NotFound("persona", persona, hint="run `nyxnb seed` or add the persona")
        return self.personas[persona]

    def render(self, step: dict[str, Any], item: ItemView | None = None) -> str:
        """Render a step's prompt, failing the step on an undefined name."""
        try:
            return render(
                step["prompt"], project=self.project, steps=StepsView(self.ctx), item=item
            )
        except TemplateError as exc:
            raise StepFailed(
                f"prompt template: {exc}", workflow_id=self.workflow_id, step=step["name"]
            ) from None

    def request(self, step: dict[str, Any], prompt: str) -> CompletionRequest:
        """The provider request for a rendered prompt."""
        config = step.get("config") or {}
        max_tokens = config.get("max_tokens") or self.spec.defaults.max_tokens
        return CompletionRequest.of(
            self.system_prompt(step),
            prompt,
            model=step.get("model"),
            max_tokens=max_tokens,
            temperature=self.spec.defaults.temperature,
        )

    def chain(self, step: dict[str, Any]) -> list[str]:
        """The step's provider chain."""
        return [step["provider"], *(step.get("fallback") or [])]

    def _cache_lookup(
        self, provider: str, model: str, request: CompletionRequest
    ) -> tuple[str, Any]:
        key = response_cache.cache_key(provider, model, request)
        with self.store.reading() as conn:
            return key, response_cache.lookup(conn, key)

    async def call(
        self, step: dict[str, Any], request: CompletionRequest, item_idx: int | None = None
    ) -> ChainResult:
        """Run the fallback chain for one request, emitting fallback events."""

        def on_fallback(src: str, dst: str | None, kind: str, message: str) -> None:
            self.emit(
                ev.ProviderFallback(
                    self.workflow_id,
                    name=step["name"],
                    order=step["order"],
                    step_type=step["type"],
                    from_provider=src,
                    to_provider=dst,
                    reason=kind,
                    message=message[:300],
                    item_index=item_idx,
                )
            )

        use_cache = self.spec.defaults.cache
        result = await complete_with_fallback(
            self.pool,
            self.chain(step),
            request,
            cache=self._cache_lookup if use_cache else None,
            on_fallback=on_fallback,
        )
        self.count(result.attempts)
        return result

    def count(self, attempts: list[Attempt]) -> None:
        """Add attempts to the run's token and cost totals."""
        for a in attempts:
            self.totals["input_tokens"] += a.input_tokens
            self.totals["output_tokens"] += a.output_tokens
            self.totals["cost_usd"] += a.cost_usd

    def spent_usd(self) -> float:
        """What this workflow has cost so far, across runs."""
        with self.store.reading() as conn:
            return float(
                conn.scalar(
                    select(func.coalesce(func.sum(LlmCall.cost_usd), 0.0)).where(
                        LlmCall.workflow_id == self.workflow_id
                    )
                )
                or 0.0
            )

    def step_event(self, cls: type[ev.StepEvent], step: dict[str, Any], **kw: Any) -> None:
        """Emit a step event with the step's name, order and type filled in."""
        self.emit(
            cls(
                self.workflow_id,
                name=step["name"],
                order=step["order"],
                step_type=step["type"],
                **kw,
            )
        )

    def fail(
        self,
        step: dict[str, Any],
        error: StepFailed | ChainExhausted | RunError,
        attempts: list[Attempt] | None = None,
        item_idx: int | None = None,
    ) -> StepFailed:
        """Record a failed step, emit ``step_failed``, and return the error to raise."""
        records.fail_step(self.store, step, str(error), attempts or [], item_idx)
        self.step_event(ev.StepFailed, step, error=str(error), item_index=item_idx)
        if isinstance(error, StepFailed):
            return error
        return StepFailed(
            str(error), workflow_id=self.workflow_id, step=step["name"], item=item_idx
        )

    # -- the loop --------------------------------------------------------------------------
    async def _run_all(self) -> None:
        user = [
            s for s in records.load_steps(self.store, self.workflow_id) if not s["auto_generated"]
        ]
        for step in user:
            await self._run_step(step)
        for step in self._sync_generated(len(user)):
            await self._run_step(step)

    async def _run_step(self, step: dict[str, Any]) -> None:
        self.check_pause()
        from .fanout import run_fan_out  # noqa: PLC0415 - fanout imports this module

        if step["type"] == "fan-out":
            await run_fan_out(self, step)
        elif step["type"] == "pattern-check":
            self._pattern_check(step)
        else:
            await self._single(step)

    def skip_if_done(self, step: dict[str, Any], digest: str, view: StepView) -> bool:
        """Skip a completed step whose inputs are unchanged (and remember its output)."""
        if step["status"] != COMPLETED or step["input_hash"] != digest or step["output"] is None:
            return False
        self.ctx[step["name"]] = view
        self.step_event(ev.StepCompleted, step, skipped=True)
        return True

    async def _single(self, step: dict[str, Any]) -> None:
        item = self._generated_item(step)
        request = self.request(step, self.render(step, item))
        digest = request_hash(step["type"], request)
        if self.skip_if_done(step, digest, StepView(step["name"], step["output"])):
            return
        records.update_step(self.store, step["id"], status=RUNNING, error=None, started_at=utcnow())
        self.step_event(
            ev.StepStarted,
            step,
            persona=step["persona"],
            provider=step["provider"],
            auto_generated=step["auto_generated"],
            heading=item.heading if item is not None else None,
        )
        try:
            result = await self.call(step, request)
        except ChainExhausted as exc:
            raise self.fail(step, exc, exc.attempts) from None
        records.complete_step(self.store, step, result.completion.text, digest, result)
        self.ctx[step["name"]] = StepView(step["name"], result.completion.text)
        tokens = (
            sum(a.input_tokens for a in result.attempts),
            sum(a.output_tokens for a in result.attempts),
        )
        self.step_event(
            ev.StepCompleted,
            step,
            provider=result.provider,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            cost_usd=sum(a.cost_usd for a in result.attempts),
        )

    def _generated_item(self, step: dict[str, Any]) -> ItemView | None:
        if step["type"] != "implementation-prompt":
            return None
        config = step["config"]
        items = self.ctx[config["from"]].items
        return items[config["item_idx"]]

    def _pattern_check(self, step: dict[str, Any]) -> None:
        config = step["config"]
        target = config.get("target") or self._previous_user_step(step)
        view = self.ctx.get(target) if target else None
        texts = [view.output or ""] + [i.output or "" for i in view.items] if view else []
        patterns = load_patterns(self.store, self.tenant_id or "", config["repository"])
        rules = [f"{p.kind}:{p.pattern}" for p in patterns]
        digest = hashlib.sha256(json.dumps([rules, texts]).encode()).hexdigest()
        if self.skip_if_done(step, digest, StepView(step["name"], step["output"])):
            return
        self.step_event(ev.StepStarted, step, persona=None, provider=None)
        report = check_code(config["repository"], patterns, texts)
        if report.violations and config.get("fail_on_violation"):
            err = StepFailed(
                f"{len(report.violations)} code pattern violations",
                workflow_id=self.workflow_id,
                step=step["name"],
            )
            raise self.fail(step, err)
        output = report.to_markdown()
        records.complete_step(self.store, step, output, digest)
        self.ctx[step["name"]] = StepView(step["name"], output)
        self.step_event(ev.StepCompleted, step)

    def _previous_user_step(self, step: dict[str, Any]) -> str | None:
        earlier = [n for n in self.ctx if n != step["name"]]
        return earlier[-1] if earlier else None

    def _sync_generated(self, first_order: int) -> list[dict[str, Any]]:
        fanouts = {
            name: [{"idx": i.index, "heading": i.heading} for i in view.items]
            for name, view in self.ctx.items()
            if view.items
        }
        wanted = desired_generated(self.spec, fanouts)
        steps = records.load_steps(self.store, self.workflow_id)
        existing = [s for s in steps if s["auto_generated"]]
        if [(s["name"], s["type"], s["config"]) for s in existing] != [
            (w["name"], w["type"], w["config"]) for w in wanted
        ]:
            defaults = self.spec.defaults
            chain = list(dict.fromkeys([defaults.provider, *defaults.fallback]))
            rows = generated_rows(
                wanted,
                workflow={"id": self.workflow_id, "tenant_id": self.tenant_id},
                first_order=first_order,
                chain=chain,
                model=self.spec.defaults.model,
            )
            records.replace_generated_steps(self.store, self.workflow_id, rows)
            steps = records.load_steps(self.store, self.workflow_id)
        return [s for s in steps if s["auto_generated"]]
