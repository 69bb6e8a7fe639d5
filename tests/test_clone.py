"""Cloning a workflow: user steps only, in their order, re-indexed, every run artefact cleared."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from nyxnb.cli.migrate import clone as clone_command
from nyxnb.errors import ConfigError, NotFound
from nyxnb.store import Store
from nyxnb.store import models as m
from nyxnb.tenants.clone import clone_workflow, plan_clone

# (order, name, type, auto_generated): stored out of order, generated steps interleaved, and a
# user step whose *type* is one the engine generates -- only the flag decides.
STEPS = [
    (7, "implementation-prompt-1", "implementation-prompt", True),
    (2, "features", "fan-out", False),
    (5, "consistency-check", "consistency-check", True),
    (0, "analysis", "llm", False),
    (9, "my-own-check", "consistency-check", False),
    (6, "implementation-prompt-0", "implementation-prompt", True),
    (4, "synthesis", "synthesis", False),
    (3, "review", "review", False),
]
KEPT = ["analysis", "features", "review", "synthesis", "my-own-check"]


def make_workflow(store: Store, status: str = "completed") -> SimpleNamespace:
    """Tenant nyx with projects A and B, a run-through workflow in A; tenant other with C."""
    w = SimpleNamespace()
    with store.session() as s:
        nyx, other = m.Tenant(slug="nyx", name="Nyx"), m.Tenant(slug="other", name="Other")
        s.add_all([nyx, other])
        s.flush()
        a = m.Project(tenant_id=nyx.id, name="A")
        b = m.Project(tenant_id=nyx.id, name="B")
        c = m.Project(tenant_id=other.id, name="C")
        s.add_all([a, b, c])
        s.flush()
        spec = {"name": "plan", "steps": [{"name": n} for n in KEPT[:4]], "max_cost_usd": 2.5}
        wf = m.Workflow(tenant_id=nyx.id, project_id=a.id, name="plan", status=status, spec=spec,
                        error="boom", lease_owner="host:1")  # fmt: skip
        s.add(wf)
        s.flush()
        for order, name, kind, auto in STEPS:
            step = m.WorkflowStep(
                tenant_id=nyx.id, workflow_id=wf.id, order=order, name=name, type=kind,
                persona=f"persona-{name}", provider="anthropic", fallback=["google", "openai"],
                model="claude", prompt=f"Do {name} for {{{{ project.name }}}}",
                config={"items": [1, 2]} if kind == "fan-out" else {}, status="completed",
                output=f"output of {name}", auto_generated=auto, input_hash="abc", error="e",
            )  # fmt: skip
            s.add(step)
            s.flush()
            if kind == "fan-out":
                s.add(m.StepItem(tenant_id=nyx.id, step_id=step.id, idx=0, heading="h",
                                 output="item", status="completed"))  # fmt: skip
        w.nyx, w.other, w.a, w.b, w.c, w.wf = nyx.id, other.id, a.id, b.id, c.id, wf.id
    return w


def test_clone_keeps_user_steps_in_order_and_clears_run_state(store):
    w = make_workflow(store)
    clone = clone_workflow(store, w.wf)
    assert clone.id != w.wf and clone.cloned_from_id == w.wf
    assert (clone.project_id, clone.tenant_id, clone.name) == (w.a, w.nyx, "plan (clone)")
    assert clone.status == "pending" and clone.error is None and clone.lease_owner is None
    assert [s.name for s in clone.steps] == KEPT
    assert [s.order for s in clone.steps] == list(range(len(KEPT)))
    with store.session() as s:
        original = {st.name: st for st in s.get_one(m.Workflow, w.wf).steps}
        steps = s.scalars(select(m.WorkflowStep).where(m.WorkflowStep.workflow_id == clone.id))
        for st in steps:
            src = original[st.name]
            assert st.id != src.id and st.tenant_id == w.nyx and not st.auto_generated
            assert (st.status, st.output, st.input_hash, st.error) == ("pending", None, None, None)
            assert (st.started_at, st.completed_at) == (None, None)
            for field in ("type", "persona", "provider", "fallback", "model", "prompt", "config"):
                assert getattr(st, field) == getattr(src, field)
        items = s.scalar(
            select(func.count())
            .select_from(m.StepItem)
            .join(m.WorkflowStep)
            .where(m.WorkflowStep.workflow_id == clone.id)
        )
        assert items == 0
        assert s.get_one(m.Workflow, clone.id).spec == s.get_one(m.Workflow, w.wf).spec


def test_clone_leaves_the_original_untouched(store):
    w = make_workflow(store)
    with store.session() as s:
        before = [
            (st.id, st.order, st.status, st.output) for st in s.get_one(m.Workflow, w.wf).steps
        ]
    clone_workflow(store, w.wf, name="again")
    with store.session() as s:
        after = [
            (st.id, st.order, st.status, st.output) for st in s.get_one(m.Workflow, w.wf).steps
        ]
    assert after == before


def test_a_running_workflow_can_be_cloned(store):
    w = make_workflow(store, status="running")
    clone = clone_workflow(store, w.wf, name="copy while running")
    assert clone.status == "pending" and [s.name for s in clone.steps] == KEPT
    with store.session() as s:
        assert s.get_one(m.Workflow, w.wf).status == "running"


def test_clone_into_another_project_of_the_same_tenant(store):
    w = make_workflow(store)
    assert clone_workflow(store, w.wf, project="B").project_id == w.b
    assert clone_workflow(store, w.wf, project=w.b).project_id == w.b
    with pytest.raises(NotFound, match="project 'C'"):
        clone_workflow(store, w.wf, project="C")  # another tenant's project


def test_tenant_scoping_and_lookup_by_name(store):
    w = make_workflow(store)
    with pytest.raises(NotFound, match="workflow"):
        clone_workflow(store, w.wf, tenant="other")
    assert clone_workflow(store, w.wf, tenant="nyx").tenant_id == w.nyx
    assert clone_workflow(store, "plan", tenant="nyx", name="plan").cloned_from_id == w.wf
    with pytest.raises(ConfigError, match="several workflows are named 'plan'"):
        clone_workflow(store, "plan")


def test_plan_clone_writes_nothing(store):
    w = make_workflow(store)
    plan = plan_clone(store, w.wf)
    assert [s["name"] for s in plan.steps] == KEPT
    assert set(plan.dropped) == {n for _, n, _, auto in STEPS if auto}
    assert "generated steps left out" in str(plan)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(m.Workflow)) == 1


def run_cli(store: Store, *args: str) -> Any:
    @click.group()
    def cli() -> None:
        pass

    cli.add_command(clone_command)
    url = store.url.render_as_string(hide_password=False)
    return CliRunner().invoke(cli, list(args), obj={"db": url, "json": False})


def test_cli_clone(sqlite_store):
    w = make_workflow(sqlite_store)
    out = run_cli(sqlite_store, "clone", w.wf, "--name", "copy")
    assert out.exit_code == 0, out.output
    assert "cloned 'plan' as 'copy'" in out.output and "3 generated steps left out" in out.output
    data = json.loads(run_cli(sqlite_store, "clone", w.wf, "--json", "--tenant", "nyx").output)
    assert [s["name"] for s in data["steps"]] == KEPT and data["cloned_from_id"] == w.wf
    missing = run_cli(sqlite_store, "clone", w.wf, "--tenant", "other")
    assert missing.exit_code == 1 and "not found" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    dry = run_cli(sqlite_store, "clone", w.wf, "--dry-run")
    assert dry.exit_code == 0 and "my-own-check" in dry.output
