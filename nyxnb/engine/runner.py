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

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from nyxnb import events as ev
from nyxnb.autosteps import desired_generated
from nyxnb.engine import telemetry
from nyxnb.engine.calls.budget import SharedBudget
from nyxnb.engine.calls.chain import ProviderPool
from nyxnb.engine.calls.governor import Limits
from nyxnb.engine.context import Emit, Paused, RunConfig, RunContext, request_hash
from nyxnb.engine.durable import lease, records
from nyxnb.engine.durable.gateway import Gateway
from nyxnb.engine.durable.rows import StepConfig, StepRow
from nyxnb.engine.fanout import run_fan_out
from nyxnb.engine.generated import generated_rows
from nyxnb.engine.iterate.digest import adigest
from nyxnb.engine.iterate.judge import run_judge
from nyxnb.engine.patterncheck import check_code, load_patterns
from nyxnb.engine.workflows import frozen_personas, personas_for
from nyxnb.errors import ChainExhausted, LeaseLost, NyxError, StepFailed, one_line
from nyxnb.providers.endpoints import endpoint_table
from nyxnb.spec import stored_spec
from nyxnb.store import Database
from nyxnb.store.models import (
    COMPLETED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    Project,
    Tenant,
    Workflow,
    utcnow,
)
from nyxnb.templates import ItemView, ProjectView, StepView

PAUSE_POLL_S = 0.25  # how soon a pause asked from another process (or `nyxnb pause`) is seen
RECORD_FAILURE_S = 5.0  # how long a failed run keeps trying to record its failure

__all__ = ["PAUSE_POLL_S", "Paused", "RunConfig", "Runner", "request_hash"]


class Runner(RunContext):
    """Executes one workflow under its lease, emitting events."""

    def __init__(
        self, store: Database, workflow_id: str, config: RunConfig | None = None, *, emit: Emit
    ) -> None:
        config = config or RunConfig()
        super().__init__(store, workflow_id, config, emit=emit)
        options = config.provider_options
        self.pool = ProviderPool(
            config.retry,
            {k: dict(v) for k, v in options.items()} if options is not None else None,
            shared=SharedBudget(Gateway.of(store)),
        )
        self.tenant_id = config.tenant_id
        self._plain = Gateway.of(store)  # lease bookkeeping; the run's writes: self.store
        self.current: StepRow | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def execute(self) -> None:
        """Run the workflow to completion, pause or failure; never leaves the lease behind."""
        self._load()
        lease.acquire(
            self._plain,
            self.workflow_id,
            self.owner,
            tenant_id=self.tenant_id,
            ttl_s=self.config.lease_ttl_s,
        )
        heartbeat = asyncio.create_task(self._heartbeat())
        started = time.perf_counter()
        try:
            with telemetry.workflow_span(self.workflow_id, self.name, self.tenant_id):
                await self._run_all(await self._started())
        except Paused:
            self._finish(PAUSED, None)
            self.emit(ev.WorkflowPaused(self.workflow_id, name=self.name))
        except asyncio.CancelledError:  # a consumer that stopped listening
            with contextlib.suppress(LeaseLost, SQLAlchemyError):
                records.reset_running_steps(self.store, self.workflow_id)
                self._finish(PAUSED, None)
            self.emit(ev.WorkflowPaused(self.workflow_id, name=self.name))
            raise
        except LeaseLost as exc:  # another run owns the workflow now: write nothing
            self._failed_event(str(exc))
        except Exception as exc:  # noqa: BLE001 - anything unexpected fails the run cleanly
            await self._fail_run(exc)
        else:
            self._finish(COMPLETED, None)
            await self._digest()
            self.emit(
                ev.WorkflowCompleted(
                    self.workflow_id,
                    name=self.name,
                    input_tokens=self.totals.input_tokens,
                    output_tokens=self.totals.output_tokens,
                    cost_usd=self.totals.cost_usd,
                    seconds=time.perf_counter() - started,
                )
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(LeaseLost, SQLAlchemyError):
                self.writer.close()
            with contextlib.suppress(SQLAlchemyError):
                lease.release(self._plain, self.workflow_id, self.owner)
            await self.pool.aclose()

    async def _fail_run(self, exc: Exception) -> None:
        """Mark the step that was running and the workflow ``failed``, with the error recorded.

        A :class:`NyxError` was already recorded on its step; anything else (a template that
        raises, a store error, a full disk) is recorded here as one line.  If the store itself
        cannot be written, the event still goes out and the lease is still released.
        """
        error = str(exc) if isinstance(exc, NyxError) else self._unexpected(exc)
        deadline = time.monotonic() + RECORD_FAILURE_S
        while True:  # a store that just failed (a held lock, a restart) may take a moment
            try:
                if not isinstance(exc, NyxError) and self.current is not None:
                    records.fail_step(self.store, self.current, error)
                records.reset_running_steps(self.store, self.workflow_id)
                self._finish(FAILED, error)
                break
            except LeaseLost:
                break
            except SQLAlchemyError:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        self._failed_event(error)

    def _unexpected(self, exc: Exception) -> str:
        where = f"step {self.current.name!r}: " if self.current is not None else ""
        fix = f"fix the cause, then `nyxnb resume {self.workflow_id}`"
        return f"{where}unexpected {one_line(exc)} ({fix})"

    def _failed_event(self, error: str) -> None:
        failed: list[str] = []
        with contextlib.suppress(SQLAlchemyError):
            failed = [n for n, s in self._statuses().items() if s == FAILED]
        self.emit(
            ev.WorkflowFailed(self.workflow_id, name=self.name, error=error, failed_steps=failed)
        )

    def prepare(self) -> None:
        """Load the workflow without running it (a worker helping another's fan-out)."""
        self._load()

    def _load(self) -> None:
        with self.store.session(self.tenant_id) as s:
            wf = s.get_one(Workflow, self.workflow_id)
            project = s.get_one(Project, wf.project_id)
            self.tenant_id, self.name, self.status = wf.tenant_id, wf.name, wf.status
            self.tenant_slug = s.get_one(Tenant, wf.tenant_id).slug
            self.spec = stored_spec(wf.spec)
            self.project = ProjectView(project.name, project.description)
            frozen = wf.personas
        if frozen is None:  # a workflow from before personas were frozen: freeze them now
            frozen = frozen_personas(self.spec, personas_for(self.store, self.tenant_id))
            records.update_workflow(self._plain, self.workflow_id, personas=frozen)
        self.personas = frozen
        d = self.spec.defaults
        limits = {name: Limits.of(spec) for name, spec in d.limits.items()}
        endpoints = endpoint_table(self.spec.endpoints)
        self.pool.apply_spec(limits, d.timeouts, d.max_wait_s, endpoints)

    async def _started(self) -> list[StepRow]:
        """Mark the workflow running and announce it; returns its steps as they stand."""
        # a completed workflow keeps its times unless a step runs again (see _finish)
        times = {} if self.status == COMPLETED else {"started_at": utcnow(), "finished_at": None}
        records.update_workflow(
            self.store,
            self.workflow_id,
            status=RUNNING,
            error=None,
            pause_requested=False,
            **times,
        )
        steps = records.load_steps(self.store, self.workflow_id)
        self.emit(
            ev.WorkflowStarted(
                self.workflow_id,
                name=self.name,
                project=self.project.name,
                tenant=self.tenant_slug,
                resumed=self.status != PENDING,
                total_steps=max(len(steps), self.spec.expected_steps()),
            )
        )
        return steps

    async def _digest(self) -> None:
        """The spec's ``digest:`` block: insights written once the run completed."""
        wanted = self.spec.digest
        if wanted is None:
            return
        try:
            await adigest(
                self.store,
                self.workflow_id,
                tenant_id=self.tenant_id,
                persona=wanted.persona,
                provider=wanted.provider,
            )
        except NyxError as exc:  # the run's outputs stand; say why there is no digest
            records.update_workflow(self.store, self.workflow_id, error=f"digest: {exc}")

    def _finish(self, status: str, error: str | None) -> None:
        unchanged = self.status == COMPLETED == status and not self.executed_steps
        times = {} if unchanged else {"finished_at": utcnow()}  # a no-op resume moves nothing
        records.update_workflow(
            self.store,
            self.workflow_id,
            status=status,
            error=error,
            pause_requested=False,
            **times,
        )

    async def _heartbeat(self) -> None:
        """Renew the lease every HEARTBEAT_S (or a quarter of a shorter TTL); look for a pause
        request every PAUSE_POLL_S."""
        ttl = self.config.lease_ttl_s
        renewed, every = time.monotonic(), min(lease.HEARTBEAT_S, ttl / 4)
        query = select(Workflow.pause_requested).where(Workflow.id == self.workflow_id)
        while True:
            await asyncio.sleep(PAUSE_POLL_S)
            try:
                if time.monotonic() - renewed >= every:
                    renewed = time.monotonic()
                    if not lease.renew(self._plain, self.workflow_id, self.owner, ttl):
                        self.pause_event.set()  # lost the lease: stop launching work
                        return
                with self._plain.reading() as conn:
                    if conn.scalar(query):
                        self.pause_event.set()
            except SQLAlchemyError:  # the store blinked (a restart): try again next tick
                continue

    def _statuses(self) -> dict[str, str]:
        return {s.name: s.status for s in records.load_steps(self.store, self.workflow_id)}

    # -- the loop --------------------------------------------------------------------------
    async def _run_all(self, steps: list[StepRow]) -> None:
        user = [s for s in steps if not s.auto_generated]
        for step in user:
            await self._run_step(step)
        for step in self._sync_generated(len(user)):
            await self._run_step(step)

    async def _run_step(self, step: StepRow) -> None:
        self.check_pause()
        self.current = step
        with telemetry.step_span(self.workflow_id, step.name, step.type, step.order):
            await self._dispatch(step)

    async def _dispatch(self, step: StepRow) -> None:
        if step.type == "fan-out":
            await run_fan_out(self, step)
        elif step.type == "pattern-check":
            self._pattern_check(step)
        elif step.type == "judge":
            await run_judge(self, step)
        else:
            await self._single(step)

    async def _single(self, step: StepRow) -> None:
        item = self._generated_item(step)
        request = self.request(step, self.render(step, item))
        digest = request_hash(step.type, request)
        if self.skip_if_done(step, digest, StepView(step.name, step.output)):
            return
        records.update_step(self.store, step.id, status=RUNNING, error=None, started_at=utcnow())
        self.emit(
            ev.StepStarted(
                *self.at(step),
                persona=step.persona,
                provider=step.provider,
                auto_generated=step.auto_generated,
                heading=item.heading if item is not None else None,
            )
        )
        try:
            result = await self.call(step, request)
        except ChainExhausted as exc:
            raise self.fail(step, exc, exc.attempts) from None
        text = result.completion.text
        records.complete_step(self.store, step, text, digest, result, self.take_sent(step))
        self.ctx[step.name] = StepView(step.name, result.completion.text)
        tokens = (
            sum(a.input_tokens for a in result.attempts),
            sum(a.output_tokens for a in result.attempts),
        )
        self.emit(
            ev.StepCompleted(
                *self.at(step),
                provider=result.provider,
                model=result.completion.model,
                cached=result.from_cache,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                cost_usd=sum(a.cost_usd for a in result.attempts),
                reasoning_tokens=sum(a.reasoning_tokens for a in result.attempts),
            )
        )

    def _generated_item(self, step: StepRow) -> ItemView | None:
        config = step.config
        if step.type != "implementation-prompt" or config.source is None or config.item_idx is None:
            return None
        return self.ctx[config.source].items[config.item_idx]

    def _pattern_check(self, step: StepRow) -> None:
        config = step.config
        repository = config.repository or ""
        target = config.target or self._previous_user_step(step)
        view = self.ctx.get(target) if target else None
        texts = [view.output or ""] + [i.output or "" for i in view.items] if view else []
        patterns = load_patterns(self.store, self.tenant_id or "", repository)
        rules = [f"{p.kind}:{p.pattern}" for p in patterns]
        digest = hashlib.sha256(json.dumps([rules, texts]).encode()).hexdigest()
        if self.skip_if_done(step, digest, StepView(step.name, step.output)):
            return
        self.emit(ev.StepStarted(*self.at(step), persona=None, provider=None))
        report = check_code(repository, patterns, texts)
        if report.violations and config.fail_on_violation:
            err = StepFailed(
                f"{len(report.violations)} code pattern violations",
                workflow_id=self.workflow_id,
                step=step.name,
            )
            raise self.fail(step, err)
        output = report.to_markdown()
        records.complete_step(self.store, step, output, digest)
        records.update_step(self.store, step.id, score=report.score)
        self.ctx[step.name] = StepView(step.name, output)
        self.emit(ev.StepCompleted(*self.at(step)))

    def _previous_user_step(self, step: StepRow) -> str | None:
        earlier = [n for n in self.ctx if n != step.name]
        return earlier[-1] if earlier else None

    def _sync_generated(self, first_order: int) -> list[StepRow]:
        fanouts = {
            name: [(i.index, i.heading) for i in view.items]
            for name, view in self.ctx.items()
            if view.items
        }
        wanted = desired_generated(self.spec, fanouts)
        steps = records.load_steps(self.store, self.workflow_id)
        existing = [s for s in steps if s.auto_generated]
        if [(s.name, s.type, s.config) for s in existing] != [
            (w.name, w.type, StepConfig.from_json(w.config)) for w in wanted
        ]:
            defaults = self.spec.defaults
            rows = generated_rows(
                wanted,
                workflow_id=self.workflow_id,
                tenant_id=self.tenant_id or "",
                first_order=first_order,
                chain=list(dict.fromkeys([defaults.provider, *defaults.fallback])),
                model=defaults.model,
            )
            records.replace_generated_steps(self.store, self.workflow_id, rows)
            steps = records.load_steps(self.store, self.workflow_id)
        return [s for s in steps if s.auto_generated]
