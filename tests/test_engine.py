"""The run loop: order, concurrency, generated steps, resume semantics, pause, leases."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import func, select, update

import nyxnb
from nyxnb import events as ev
from nyxnb.providers import Completion, CompletionRequest, Provider, register
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep
from nyxnb.store.seed import seed


class Recorder(Provider):
    """A provider that records every call, tracks calls in flight, and can be slowed or failed."""

    name = "recorder"
    default_model = "rec-1"
    calls: list[str] = []
    in_flight = 0
    max_in_flight = 0
    delay_s = 0.0
    lock = threading.Lock()

    @classmethod
    def reset(cls, delay_s: float = 0.0) -> None:
        cls.calls, cls.in_flight, cls.max_in_flight, cls.delay_s = [], 0, 0, delay_s

    async def complete(self, request: CompletionRequest) -> Completion:
        prompt = request.messages[0].content
        with Recorder.lock:
            Recorder.in_flight += 1
            Recorder.max_in_flight = max(Recorder.max_in_flight, Recorder.in_flight)
            Recorder.calls.append(prompt)
        try:
            await asyncio.sleep(self.delay_s * (1 + (hash(prompt) % 5) / 5))
        finally:
            with Recorder.lock:
                Recorder.in_flight -= 1
        return Completion(f"answer to {prompt[:50]}", "end", 10, 5, "rec-1", "recorder")


register("recorder", Recorder)


@pytest.fixture
def seeded(store):
    seed(store)
    Recorder.reset()
    return store


def spec(n_items: int = 5, **defaults) -> dict:
    return {
        "name": "t",
        "defaults": {"provider": "recorder", "fallback": [], "cache": False, **defaults},
        "steps": [
            {"name": "analysis", "persona": "Athena", "prompt": "Analyse {{ project.name }}"},
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "items": [{"heading": f"Feature {i}", "body": f"body {i}"} for i in range(n_items)],
                "prompt": "Design {{ item.heading }} ({{ item.index }})",
            },
            {
                "name": "synthesis",
                "type": "synthesis",
                "persona": "Harmonia",
                "prompt": "{% for i in steps.features.items %}{{ i.heading }}={{ i.output }};"
                "{% endfor %}",
            },
        ],
        "generate": {
            "consistency_check": {"persona": "Nemesis"},
            "implementation_prompts": {"from": "features", "persona": "Aristaeus"},
        },
    }


def steps_of(store, workflow_id):
    with store.session() as s:
        return s.scalars(
            select(WorkflowStep)
            .where(WorkflowStep.workflow_id == workflow_id)
            .order_by(WorkflowStep.order)
        ).all()


def test_run_completes_all_steps_in_order_with_generated_steps(seeded):
    result = nyxnb.run(spec(5), tenant="nyx", project="BRbase", store=seeded)
    assert result.ok, result.error
    steps = steps_of(seeded, result.workflow_id)
    assert [s.name for s in steps] == [
        "analysis",
        "features",
        "synthesis",
        "consistency_check",
        *[f"implement_{i:02d}" for i in range(1, 6)],
    ]
    assert [s.order for s in steps] == list(range(9))
    assert all(s.status == "completed" and s.output for s in steps)
    assert [s.auto_generated for s in steps] == [False] * 3 + [True] * 6
    started = [e.name for e in result.events if isinstance(e, ev.StepStarted)]
    assert started == [s.name for s in steps]


def test_fan_out_keeps_item_order_and_reports_progress(seeded):
    Recorder.reset(delay_s=0.01)
    result = nyxnb.run(spec(12, concurrency=4), tenant="nyx", project="BRbase", store=seeded)
    assert result.ok
    fan = steps_of(seeded, result.workflow_id)[1]
    with seeded.session() as s:
        items = s.scalars(
            select(StepItem).where(StepItem.step_id == fan.id).order_by(StepItem.idx)
        ).all()
    assert [i.heading for i in items] == [f"Feature {i}" for i in range(12)]
    assert all(f"Design Feature {i} ({i})" in items[i].output for i in range(12))
    progress = [e for e in result.events if isinstance(e, ev.FanOutProgress)]
    assert len(progress) == 12 and {e.fan_out_total for e in progress} == {12}
    assert sorted(e.fan_out_index for e in progress) == list(range(1, 13))
    assert [e.completed for e in progress] == list(range(1, 13))
    headings = {e.fan_out_index: e.fan_out_heading for e in progress}
    assert headings[3] == "Feature 2"
    # implementation-prompt steps show progress too: one started event each, with the item
    assert fan.output.index("Feature 0") < fan.output.index("Feature 11")


def test_concurrency_limit_is_never_exceeded(seeded):
    Recorder.reset(delay_s=0.02)
    result = nyxnb.run(spec(20, concurrency=3), tenant="nyx", project="BRbase", store=seeded)
    assert result.ok
    assert Recorder.max_in_flight == 3


def test_the_original_resume_bug_cannot_recur(seeded):
    """Synthesis pending while later generated steps are completed: resume must run synthesis."""
    result = nyxnb.run(spec(3), tenant="nyx", project="BRbase", store=seeded)
    synthesis = steps_of(seeded, result.workflow_id)[2]
    with seeded.session() as s:
        s.execute(
            update(WorkflowStep)
            .where(WorkflowStep.id == synthesis.id)
            .values(status="pending", output=None, input_hash=None)
        )
        s.execute(update(Workflow).where(Workflow.id == result.workflow_id).values(status="failed"))
    Recorder.reset()
    again = nyxnb.resume(result.workflow_id, store=seeded)
    assert again.ok
    assert any(c.startswith("Feature 0=") for c in Recorder.calls)  # synthesis was called
    after = steps_of(seeded, result.workflow_id)[2]
    assert after.status == "completed" and after.output and "Feature 2=" not in after.output


def test_completed_step_without_output_is_rejected_by_the_database(seeded):
    result = nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded)
    step = steps_of(seeded, result.workflow_id)[0]
    with pytest.raises(Exception, match="(?i)check|constraint"):
        with seeded.session() as s:
            s.execute(update(WorkflowStep).where(WorkflowStep.id == step.id).values(output=None))


def test_resume_reruns_running_and_failed_steps_but_never_committed_items(seeded):
    result = nyxnb.run(spec(6), tenant="nyx", project="BRbase", store=seeded)
    fan = steps_of(seeded, result.workflow_id)[1]
    with seeded.session() as s:  # simulate a crash mid fan-out: 2 items lost, step running
        s.execute(
            update(StepItem)
            .where(StepItem.step_id == fan.id, StepItem.idx.in_([1, 4]))
            .values(status="pending", output=None)
        )
        s.execute(
            update(WorkflowStep)
            .where(WorkflowStep.id == fan.id)
            .values(status="running", output=None)
        )
    Recorder.reset()
    again = nyxnb.resume(result.workflow_id, store=seeded)
    assert again.ok
    fan_calls = [c for c in Recorder.calls if c.startswith("Design")]
    assert sorted(fan_calls) == ["Design Feature 1 (1)", "Design Feature 4 (4)"]
    # synthesis reads the same outputs: unchanged inputs, so it is not called again
    assert not any("=" in c and c.startswith("Feature") for c in Recorder.calls)


def test_resuming_a_completed_workflow_keeps_its_times(seeded):
    """`nyxnb resume` of a completed workflow ran nothing but moved its finished_at."""
    result = nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded)

    def times() -> tuple[object, object, str]:
        with seeded.session() as s:
            wf = s.get_one(Workflow, result.workflow_id)
            return wf.started_at, wf.finished_at, wf.status

    before = times()
    Recorder.reset()
    again = nyxnb.resume(result.workflow_id, store=seeded)
    assert again.ok and not Recorder.calls
    assert times() == before and before[1] is not None


def test_changed_input_reruns_a_completed_step(seeded):
    result = nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded)
    with seeded.session() as s:
        s.execute(
            update(WorkflowStep)
            .where(WorkflowStep.workflow_id == result.workflow_id, WorkflowStep.name == "analysis")
            .values(prompt="Analyse {{ project.name }} again, deeper")
        )
    Recorder.reset()
    again = nyxnb.resume(result.workflow_id, store=seeded)
    assert again.ok
    # analysis re-runs; so does the consistency check, which reads analysis' new output;
    # the fan-out and synthesis do not read it, so they are not called again
    assert Recorder.calls[0] == "Analyse BRbase again, deeper"
    assert len(Recorder.calls) == 2 and Recorder.calls[1].startswith("Check the plan")


def test_pause_between_items_then_resume_finishes_without_repeats(seeded):
    Recorder.reset(delay_s=0.02)
    holder: dict = {}

    def on_event(event):
        if isinstance(event, ev.FanOutProgress) and event.completed == 4:
            nyxnb.pause(event.workflow_id, store=seeded)
            holder["runner"].pause_event.set()  # in-process pause is immediate

    from nyxnb.engine.api import Job, job_events_sync

    wf = nyxnb.create_workflow(seeded, spec(30, concurrency=2), tenant="nyx", project="BRbase")
    job = Job(seeded, wf, on_event=on_event, runner_ready=lambda r: holder.update(runner=r))
    events = list(job_events_sync(job))
    assert isinstance(events[-1], ev.WorkflowPaused)
    with seeded.session() as s:
        assert s.get_one(Workflow, wf).status == "paused"
        done = s.scalar(
            select(func.count())
            .select_from(StepItem)
            .where(
                StepItem.status == "completed",
                StepItem.step_id.in_(select(WorkflowStep.id).where(WorkflowStep.workflow_id == wf)),
            )
        )
    assert 4 <= done < 30
    first_calls = list(Recorder.calls)
    Recorder.reset()
    result = nyxnb.resume(wf, store=seeded)
    assert result.ok
    fan_calls = [c for c in first_calls + Recorder.calls if c.startswith("Design")]
    assert len(fan_calls) == len(set(fan_calls)) == 30


def test_a_second_runner_gets_a_clear_lease_error(seeded):
    Recorder.reset(delay_s=0.05)
    wf = nyxnb.create_workflow(seeded, spec(10, concurrency=1), tenant="nyx", project="BRbase")
    errors: list[Exception] = []
    started = threading.Event()

    def first():
        for e in nyxnb.resume_iter(wf, store=seeded):
            if isinstance(e, ev.FanOutProgress):
                started.set()

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(10)
    try:
        nyxnb.resume(wf, store=seeded)
    except nyxnb.LeaseHeld as exc:
        errors.append(exc)
    t.join()
    assert errors and "is being run by" in str(errors[0]) and "nyxnb pause" in str(errors[0])


def test_ledger_has_one_row_per_call(seeded):
    result = nyxnb.run(spec(4), tenant="nyx", project="BRbase", store=seeded)
    with seeded.session() as s:
        rows = s.scalars(select(LlmCall).where(LlmCall.workflow_id == result.workflow_id)).all()
    assert len(rows) == len(Recorder.calls) == 1 + 4 + 1 + 1 + 4
    assert {r.outcome for r in rows} == {"ok"} and all(r.input_tokens == 10 for r in rows)


def test_cached_rerun_makes_zero_calls(seeded):
    body = spec(4)
    body["defaults"]["cache"] = True
    first = nyxnb.run(body, tenant="nyx", project="BRbase", store=seeded)
    n = len(Recorder.calls)
    second = nyxnb.run(body, tenant="nyx", project="BRbase", store=seeded)
    assert first.ok and second.ok and len(Recorder.calls) == n
    with seeded.session() as s:
        rows = s.scalars(select(LlmCall).where(LlmCall.workflow_id == second.workflow_id)).all()
    assert rows and all(r.cached and r.cost_usd == 0 for r in rows)


def test_events_are_json_serialisable_with_a_type(seeded):
    result = nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded)
    for event in result.events:
        data = ev.event_from_dict(__import__("json").loads(event.to_json()))
        assert data == event and event.to_dict()["type"] == event.type
        assert event.workflow_id == result.workflow_id


def test_async_iterator_api(seeded):
    async def main():
        return [e async for e in nyxnb.arun(spec(2), tenant="nyx", project="BRbase", store=seeded)]

    events = asyncio.run(main())
    assert events[0].type == "workflow_started" and events[-1].type == "workflow_completed"


def test_sync_api_works_inside_a_running_event_loop(seeded):
    async def notebook_cell():
        return nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded)

    assert asyncio.run(notebook_cell()).ok


def test_an_error_building_an_items_rows_fails_the_run_and_resume_finishes(seeded, monkeypatch):
    """An item's rows go to the writer in a loop callback: its error must fail the run (not
    vanish into the loop's exception handler), and a resume must complete every item."""
    from nyxnb.engine.durable import items

    real = items.item_rows

    def broken(step, idx, *args, **kw):
        if idx == 2:
            raise RuntimeError("disk full while building rows")
        return real(step, idx, *args, **kw)

    monkeypatch.setattr(items, "item_rows", broken)
    result = nyxnb.run(spec(5), tenant="nyx", project="BRbase", store=seeded)
    assert not result.ok and "disk full while building rows" in (result.error or "")
    monkeypatch.setattr(items, "item_rows", real)
    resumed = nyxnb.resume(result.workflow_id, store=seeded)
    assert resumed.ok
    with seeded.session() as s:
        statuses = s.scalars(
            select(StepItem.status)
            .join(WorkflowStep, WorkflowStep.id == StepItem.step_id)
            .where(WorkflowStep.workflow_id == result.workflow_id)
        ).all()
    assert statuses and set(statuses) == {"completed"}
