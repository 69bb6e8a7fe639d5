"""Insights: deterministic facts of a run plus a persona's digest, written to workflow_insights."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import nyxnb
from nyxnb.cli.main import cli
from nyxnb.engine.iterate.digest import digest
from nyxnb.errors import NotFound
from nyxnb.store.models import WorkflowInsight
from nyxnb.testing import credit_exhausted
from tests.helpers import minimal
from tests.test_revisions import spec


def test_digest_writes_facts_and_an_llm_digest(store, fake_server):
    minimal(store)
    body = spec(provider="anthropic", fallback=["openai"])
    fake_server.script("anthropic", credit_exhausted())
    run = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert run.ok, run.error
    found = digest(run.workflow_id, store=store, persona="Harmonia", provider="offline")
    kinds = [i.kind for i in found]
    assert kinds[0] == "fact:calls" and kinds[-1] == "digest"
    text = {i.kind: i.content for i in found}
    assert "1 failed (anthropic/" in text["fact:calls"]
    assert "analysis fell back: anthropic -> openai" in text["fact:fallback"]
    assert text["fact:cost"].startswith("cost by step: ")
    assert "slowest items: features item" in text["fact:slowest"]
    assert text["digest"].startswith("[offline] You are Harmonia")
    with store.session() as s:
        rows = s.scalars(
            select(WorkflowInsight).where(WorkflowInsight.workflow_id == run.workflow_id)
        ).all()
        assert sorted(r.kind for r in rows) == sorted(kinds)
    again = digest(run.workflow_id, store=store, llm=False)  # re-run replaces, no duplicates
    with store.session() as s:
        count = len(s.scalars(select(WorkflowInsight)).all())
    assert count == len(again) and "digest" not in [i.kind for i in again]


def test_cli_digest_json_and_unknown_workflow(store, fake_server):
    minimal(store)
    run = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=store)
    url = store.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(
        cli, ["--db", url, "digest", run.workflow_id, "--provider", "offline", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[-1]["kind"] == "digest"
    with pytest.raises(NotFound):
        digest("missing", store=store)


def test_a_digest_block_writes_insights_when_the_run_completes(store):
    minimal(store)
    body = spec(provider="offline")
    body["digest"] = {"persona": "Cael"}
    run = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert run.ok, run.error
    with store.session() as s:
        rows = s.scalars(
            select(WorkflowInsight).where(WorkflowInsight.workflow_id == run.workflow_id)
        ).all()
        digest_rows = [r.content for r in rows if r.kind == "digest"]
    assert len(digest_rows) == 1 and digest_rows[0].startswith("[offline] You are Cael")


def test_a_failed_digest_leaves_the_run_completed_with_the_reason(store):
    minimal(store)
    body = spec(provider="offline")
    body["digest"] = {"persona": "Nobody"}
    run = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert run.ok
    with store.session() as s:
        from nyxnb.store.models import Workflow

        wf = s.get_one(Workflow, run.workflow_id)
        assert wf.status == "completed" and "digest: persona 'Nobody' not found" in (wf.error or "")
