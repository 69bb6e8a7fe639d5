"""Revisions: only a changed step and what reads it call the provider; the old run is untouched."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import nyxnb
from nyxnb.cli.main import cli
from nyxnb.engine.iterate.revisions import lineage
from nyxnb.errors import SpecError
from nyxnb.store import Store
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep
from nyxnb.testing import FakeProviderServer, prompt_of
from tests.helpers import minimal


def spec(analysis: str = "Analyse {{ project.name }}", **defaults: Any) -> dict[str, Any]:
    """analysis -> a 3-item fan-out that reads nothing -> synthesis that reads both; openai."""
    return {
        "name": "plan",
        "defaults": {"provider": "openai", "fallback": [], "cache": False, **defaults},
        "steps": [
            {"name": "analysis", "persona": "Athena", "prompt": analysis},
            {"name": "features", "type": "fan-out", "persona": "Cael",
             "items": [{"heading": f"F{i}"} for i in range(3)],
             "prompt": "Design {{ item.heading }}"},
            {"name": "synthesis", "type": "synthesis", "persona": "Harmonia",
             "prompt": "{{ steps.analysis.output }} {% for i in steps.features.items %}"
                       "{{ i.heading }};{% endfor %}"},
            {"name": "notes", "persona": "Athena", "prompt": "Notes on {{ project.name }}"},
        ],
    }  # fmt: skip


def checksum(store: Store, workflow_id: str) -> str:
    """A digest of every row the old workflow owns (workflow, steps, items, calls)."""
    with store.reading() as conn:
        rows: list[Any] = [
            dict(r)
            for r in conn.execute(select(Workflow).where(Workflow.id == workflow_id)).mappings()
        ]
        steps = select(WorkflowStep.id).where(WorkflowStep.workflow_id == workflow_id)
        for table, where in (
            (WorkflowStep.__table__, WorkflowStep.workflow_id == workflow_id),
            (StepItem.__table__, StepItem.step_id.in_(steps)),
            (LlmCall.__table__, LlmCall.workflow_id == workflow_id),
        ):
            rows += [
                dict(r) for r in conn.execute(select(table).where(where).order_by("id")).mappings()
            ]
    return hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()


def calls_by_step(store: Store, workflow_id: str) -> dict[str, int]:
    query = (
        select(WorkflowStep.name, LlmCall.id)
        .join(WorkflowStep, WorkflowStep.id == LlmCall.step_id)
        .where(LlmCall.workflow_id == workflow_id)
    )
    out: dict[str, int] = {}
    with store.reading() as conn:
        for name, _ in conn.execute(query):
            out[name] = out.get(name, 0) + 1
    return out


@pytest.fixture
def first(store: Store, fake_server: FakeProviderServer) -> str:
    minimal(store)
    result = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    fake_server.reset()
    return result.workflow_id


def test_changed_step_and_its_readers_alone_call_the_provider(store, fake_server, first):
    before = checksum(store, first)
    changed = spec("Analyse {{ project.name }} in depth")
    result = nyxnb.rerun(first, changed, store=store)
    assert result.ok, result.error
    prompts = [prompt_of(p, body) for p, _, body in fake_server.requests]
    # analysis changed; synthesis reads it. features and notes read nothing that changed.
    assert len(prompts) == 2 and fake_server.hits["openai"] == 2
    assert prompts[0].startswith("Analyse BRbase in depth")
    assert calls_by_step(store, result.workflow_id) == {"analysis": 1, "synthesis": 1}
    assert checksum(store, first) == before  # the old run is never modified
    assert {e.workflow_id for e in result.events} == {result.workflow_id} != {first}
    with store.session() as s:
        new = s.get_one(Workflow, result.workflow_id)
        assert new.revision_of == first and new.status == "completed"
        steps = {st.name: st for st in new.steps}
        assert steps["features"].reused_from is not None and len(steps["features"].items) == 3
        assert steps["notes"].reused_from is not None and steps["analysis"].reused_from is None


def test_unchanged_spec_makes_no_call_and_from_forces_the_rest(store, fake_server, first):
    same = nyxnb.rerun(first, spec(), store=store)
    assert same.ok and fake_server.hits["openai"] == 0
    forced = nyxnb.rerun(first, spec(), store=store, from_step="synthesis")
    assert forced.ok
    assert calls_by_step(store, forced.workflow_id) == {"synthesis": 1, "notes": 1}
    with pytest.raises(SpecError, match="from_step"):
        nyxnb.rerun(first, spec(), store=store, from_step="nope")


def test_changed_provider_reruns_the_step(store, fake_server, first):
    changed = spec()
    changed["steps"][3]["provider"] = "anthropic"
    result = nyxnb.rerun(first, changed, store=store)
    assert result.ok and fake_server.hits == {"anthropic": 1, "openai": 0, "google": 0}


def test_one_changed_item_runs_alone(store, fake_server, first):
    changed = spec()
    changed["steps"][1]["items"][2] = {"heading": "F9"}
    result = nyxnb.rerun(first, changed, store=store)
    assert result.ok
    assert calls_by_step(store, result.workflow_id) == {"features": 1, "synthesis": 1}


def test_cli_rerun_json_and_lineage(store, fake_server, first, tmp_path):
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(spec("Analyse {{ project.name }} again")))
    url = store.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(cli, ["--db", url, "rerun", first, "--spec", str(path), "--json"])
    assert out.exit_code == 0, out.output
    ids = {json.loads(line)["workflow_id"] for line in out.output.splitlines()}
    assert len(ids) == 1 and first not in ids
    (second,) = ids
    third = nyxnb.rerun(second, store=store).workflow_id
    assert [r.id for r in lineage(store, third)] == [first, second, third]
    out = CliRunner().invoke(cli, ["--db", url, "revisions", second, "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [(r["id"], r["revision_of"]) for r in rows] == [
        (first, None),
        (second, first),
        (third, second),
    ]
