"""Judge steps: a parsed, validated score; an unparseable grade is a failed attempt, never 0."""

from __future__ import annotations

import pytest
from sqlalchemy import select

import nyxnb
from nyxnb.engine.iterate.judge import parse_score
from nyxnb.errors import SpecError
from nyxnb.store.models import LlmCall, WorkflowStep
from nyxnb.testing import Reply
from tests.helpers import minimal


def judged(provider: str = "openai") -> dict:
    return {
        "name": "judged",
        "defaults": {"provider": provider, "fallback": [], "cache": False},
        "steps": [
            {"name": "answer", "persona": "Athena", "prompt": "Plan {{ project.name }}"},
            {"name": "grade", "type": "judge", "persona": "Nemesis", "target": "answer",
             "rubric": "Concrete, testable steps.", "scale": 10},
        ],
    }  # fmt: skip


def step(store, workflow_id, name):
    with store.session() as s:
        row = s.scalar(
            select(WorkflowStep).where(
                WorkflowStep.workflow_id == workflow_id, WorkflowStep.name == name
            )
        )
        s.expunge(row)
        return row


def test_parse_score_validates_the_range_and_scale():
    assert parse_score("SCORE: 7\nfine", 10) == 7.0
    assert parse_score("**Score:** 8.5/10", 10) == 8.5
    assert parse_score("score: 11", 10) is None
    assert parse_score("SCORE: 4/5", 10) is None
    assert parse_score("looks good, 9 out of 10", 10) is None


def test_judge_stores_a_numeric_score(store, fake_server):
    minimal(store)
    fake_server.script("openai", Reply(text="a plan"), Reply(text="SCORE: 6\nclear enough"))
    result = nyxnb.run(judged(), tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    grade = step(store, result.workflow_id, "grade")
    assert grade.score == 6.0 and grade.output.startswith("SCORE: 6")
    prompt = fake_server.requests[-1][2]["messages"][-1]["content"]
    assert "Concrete, testable steps." in prompt and "a plan" in prompt


def test_unparseable_grade_is_a_failed_attempt_then_retried(store, fake_server):
    minimal(store)
    fake_server.script(
        "openai", Reply(text="a plan"), Reply(text="I like it a lot"), Reply(text="SCORE: 3")
    )
    result = nyxnb.run(judged(), tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    assert step(store, result.workflow_id, "grade").score == 3.0
    with store.session() as s:
        calls = s.scalars(
            select(LlmCall)
            .where(LlmCall.workflow_id == result.workflow_id)
            .order_by(LlmCall.created_at)
        ).all()
        kinds = [(c.outcome, c.error_kind) for c in calls]
    assert kinds == [("ok", None), ("error", "malformed"), ("ok", None)]


def test_never_a_valid_grade_fails_the_step_without_a_score(store, fake_server):
    minimal(store)
    fake_server.script("openai", Reply(text="a plan"))
    fake_server.set_default("openai", Reply(text="no idea"))
    result = nyxnb.run(judged(), tenant="nyx", project="BRbase", store=store)
    assert not result.ok and "no valid score" in (result.error or "")
    grade = step(store, result.workflow_id, "grade")
    assert grade.status == "failed" and grade.score is None


def test_offline_judge_and_pattern_check_scores(store):
    minimal(store)
    result = nyxnb.run(judged("offline"), tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    score = step(store, result.workflow_id, "grade").score
    assert score is not None and 0 <= score <= 10


def test_judge_needs_a_target_and_rubric():
    bad = judged()
    del bad["steps"][1]["rubric"]
    with pytest.raises(SpecError, match="rubric"):
        nyxnb.load_spec(bad)
