"""OpenTelemetry spans: workflow, step and call spans with GenAI attributes; no prompt, no key."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nyxnb
from nyxnb.engine import telemetry
from tests.helpers import minimal

SPEC = {
    "name": "traced",
    "defaults": {"provider": "openai", "fallback": [], "concurrency": 2, "cache": False},
    "steps": [
        {"name": "analysis", "persona": "Athena", "prompt": "Analyse SECRET-PROMPT-TEXT"},
        {
            "name": "features",
            "type": "fan-out",
            "persona": "Cael",
            "items": [{"heading": "A"}, {"heading": "B"}],
            "prompt": "Design {{ item.heading }}",
        },
    ],
}


def _traced_run(store, capture: bool) -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    minimal(store)
    nyxnb.enable_tracing(provider, capture_prompts=capture)
    try:
        result = nyxnb.run(SPEC, tenant="nyx", project="BRbase", store=store)
    finally:
        telemetry.disable_tracing()
    assert result.ok, result.error
    return list(exporter.get_finished_spans())


def test_spans_carry_gen_ai_attributes(sqlite_store, fake_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-NEVER-IN-SPANS")
    finished = _traced_run(sqlite_store, False)
    by_name = {s.name: s for s in finished}
    workflow = next(s for s in finished if s.name == "workflow traced")
    calls = [s for s in finished if s.name.startswith("chat ")]
    assert len(calls) == 3  # analysis + two items
    for call in calls:
        attrs = dict(call.attributes or {})
        assert attrs["gen_ai.system"] == "openai"
        assert attrs["gen_ai.request.model"]
        assert attrs["gen_ai.usage.input_tokens"] > 0
        assert attrs["gen_ai.usage.output_tokens"] > 0
        assert attrs["nyxnb.workflow.id"] == workflow.attributes["nyxnb.workflow.id"]
        assert call.context.trace_id == workflow.context.trace_id
    items = sorted(dict(c.attributes or {}).get("nyxnb.item.index", -1) for c in calls)
    assert items == [-1, 0, 1]
    assert "step features" in by_name and "step analysis" in by_name
    text = repr([dict(s.attributes or {}) for s in finished])
    assert "SECRET-PROMPT-TEXT" not in text and "NEVER-IN-SPANS" not in text


def test_prompt_recorded_only_when_asked(sqlite_store, fake_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-NEVER-IN-SPANS")
    finished = _traced_run(sqlite_store, True)
    text = repr([dict(s.attributes or {}) for s in finished])
    assert "SECRET-PROMPT-TEXT" in text and "NEVER-IN-SPANS" not in text


def test_tracing_is_off_by_default(sqlite_store):
    telemetry.disable_tracing()
    with telemetry.span("x") as current:
        assert current is None
