"""Structured outputs: each provider's native mode, validated answers, invalid ones never stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select

import nyxnb
from nyxnb.errors import SpecError
from nyxnb.providers.structured import example_for, invalid_reason
from nyxnb.spec import load_spec
from nyxnb.store.models import LlmCache, LlmCall, StepItem
from nyxnb.store.seed import seed
from nyxnb.testing import FakeProviderServer, Reply, schema_of
from nyxnb.testing.batches import FakeBatchServer
from tests.batch_helpers import FAST_POLL, fan_out
from tests.helpers import minimal

PROVIDERS = ["anthropic", "openai", "google"]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["bug", "feature", "question"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["label", "priority", "tags"],
    "additionalProperties": False,
}


def spec(provider: str, n: int = 3, fallback: list[str] | None = None, **step: Any) -> dict:
    return {
        "name": "triage",
        "defaults": {"provider": provider, "fallback": fallback or [], "cache": True},
        "steps": [
            {"name": "tickets", "type": "fan-out", "persona": "Cael", "output_schema": SCHEMA,
             "items": [{"heading": f"Ticket {i}"} for i in range(n)],
             "prompt": "Triage {{ item.heading }}", **step},
            {"name": "report", "type": "synthesis", "persona": "Athena",
             "prompt": "{% for i in steps.tickets.items %}{{ i.data.label }}/"
                       "{{ i.data.priority }};{% endfor %}"},
        ],
    }  # fmt: skip


def _items(store, workflow_id: str) -> list[StepItem]:
    with store.session() as s:
        rows = s.scalars(select(StepItem).order_by(StepItem.idx))
        return [r for r in rows if r.step.workflow_id == workflow_id]


def _calls(store, workflow_id: str) -> list[LlmCall]:
    with store.session() as s:
        return list(s.scalars(select(LlmCall).where(LlmCall.workflow_id == workflow_id)))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_native_mode_per_provider_and_the_validated_json_is_stored(
    store, fake_server: FakeProviderServer, provider
):
    minimal(store)
    result = nyxnb.run(spec(provider), tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    asked = [schema_of(p, body) for p, _, body in fake_server.requests if p == provider]
    assert asked[:3] == [SCHEMA] * 3  # the SDK sent the provider's own structured-output field
    if provider == "openai":
        fmt = fake_server.requests[0][2]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    for item in _items(store, result.workflow_id):
        assert invalid_reason(item.output or "", SCHEMA) is None
        assert json.loads(item.output or "")["label"] in ("bug", "feature", "question")
    outputs = [json.loads(i.output or "") for i in _items(store, result.workflow_id)]
    wanted = "".join(f"{o['label']}/{o['priority']};" for o in outputs)
    assert wanted in json.dumps(fake_server.requests[-1][2])  # item.data.X reached the synthesis


def test_invalid_answer_is_a_failed_attempt_retried_then_passed_down_the_chain(
    store, fake_server: FakeProviderServer
):
    minimal(store)
    bad = Reply(invalid_json=True)
    wrong = Reply(text=json.dumps({"label": "urgent", "priority": 9, "tags": []}))
    fake_server.script("openai", bad, wrong, bad)
    body = spec("openai", n=1, fallback=["anthropic"])
    body["defaults"]["concurrency"] = 1
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    calls = [c for c in _calls(store, result.workflow_id) if c.item_idx == 0]
    invalid = [c for c in calls if c.error_kind == "invalid_output"]
    assert [c.provider for c in invalid] == ["openai"] * 3  # retried, then the next provider
    assert "not JSON" in (invalid[0].error or "") and "priority" in (invalid[1].error or "")
    ok = [c for c in calls if c.outcome == "ok"]
    assert [c.provider for c in ok] == ["anthropic"]
    (item,) = [i for i in _items(store, result.workflow_id) if i.idx == 0]
    assert invalid_reason(item.output or "", SCHEMA) is None and item.provider == "anthropic"
    with store.session() as s:
        cached = [c.text for c in s.scalars(select(LlmCache)) if c.text.startswith("{")]
    assert cached == [item.output]  # only the valid answer was cached, never an invalid one


def test_a_second_run_takes_the_validated_json_from_the_cache(
    store, fake_server: FakeProviderServer
):
    """The cache holds the validated JSON: a second run makes no call and stores the same."""
    minimal(store)
    first = nyxnb.run(spec("openai", n=2), tenant="nyx", project="BRbase", store=store)
    assert first.ok, first.error
    fake_server.reset()
    again = nyxnb.run(spec("openai", n=2), tenant="nyx", project="BRbase", store=store)
    assert again.ok and fake_server.hits["openai"] == 0
    outputs = [i.output for i in _items(store, again.workflow_id)]
    assert outputs == [i.output for i in _items(store, first.workflow_id)]


def test_offline_answers_deterministic_schema_valid_json(store):
    minimal(store)
    runs = [nyxnb.run(spec("offline"), tenant="nyx", project="BRbase", store=store)]
    runs.append(nyxnb.run(spec("offline"), tenant="nyx", project="BRbase", store=store))
    outs = [[i.output for i in _items(store, r.workflow_id)] for r in runs]
    assert outs[0] == outs[1] and all(invalid_reason(o or "", SCHEMA) is None for o in outs[0])


class Verdict(BaseModel):
    label: str
    confidence: float


def test_pydantic_model_and_schema_file_and_bad_schema(tmp_path):
    parsed = load_spec(spec("offline", output_schema=Verdict))
    assert parsed.steps[0].output_schema == Verdict.model_json_schema()
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    (tmp_path / "s.yaml").write_text(json.dumps(spec("offline", output_schema="schema.json")))
    assert load_spec(tmp_path / "s.yaml").steps[0].output_schema == SCHEMA
    with pytest.raises(SpecError, match="not a valid JSON Schema"):
        load_spec(spec("offline", output_schema={"type": "objekt"}))


@pytest.mark.parametrize("seed_text", ["a", "b", "c"])
def test_example_for_is_valid_for_nested_schemas(seed_text):
    nested = {
        "type": "object",
        "properties": {
            "rows": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/row"}},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "ok": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 5},
        },
        "$defs": {"row": {"type": "object", "properties": {"k": {"const": "x"}}}},
    }
    assert invalid_reason(json.dumps(example_for(nested, seed_text)), nested) is None


@pytest.fixture
def batch_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv


@pytest.mark.parametrize("provider", PROVIDERS)
def test_batch_mode_asks_for_the_schema_and_validates(sqlite_store, batch_server, provider):
    seed(sqlite_store)
    body = spec(provider, n=4, batch=True)
    body["defaults"] |= {"batch_poll": FAST_POLL, "cache": False}
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    items, calls, batches = fan_out(sqlite_store, result.workflow_id, "tickets")
    assert len(batches) == 1 and {c.service_tier for c in calls} == {"batch"}
    assert all(invalid_reason(i.output or "", SCHEMA) is None for i in items)
