"""Opt-in OpenTelemetry spans for workflow, step and provider call (GenAI semantic conventions).

Off unless ``NYXNB_OTEL=1`` or :func:`enable_tracing` was called: then every workflow, step and
provider call is a span carrying nyxnb's ids (``nyxnb.workflow.id``, ``nyxnb.step.name``,
``nyxnb.item.index``) and, on calls, ``gen_ai.system``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``.  The prompt text
is recorded only with ``capture_prompts=True`` (``NYXNB_OTEL_CAPTURE_PROMPTS=1``); keys never.
With ``NYXNB_OTEL=1`` and no provider of its own, spans go to the standard OTLP exporter,
configured by the usual ``OTEL_EXPORTER_OTLP_*`` variables (extra ``nyxnb[otel]``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

_state: dict[str, Any] = {"tracer": None, "prompts": False, "checked_env": False}


def enable_tracing(provider: Any | None = None, *, capture_prompts: bool = False) -> None:
    """Turn spans on: to ``provider`` (an SDK ``TracerProvider``) or the OTLP exporter."""
    from opentelemetry import trace

    if provider is None:
        provider = _otlp_provider()
    _state["tracer"] = (
        provider.get_tracer("nyxnb") if provider is not None else trace.get_tracer("nyxnb")
    )
    _state["prompts"] = capture_prompts
    _state["checked_env"] = True


def disable_tracing() -> None:
    """Turn spans off again."""
    _state.update(tracer=None, prompts=False, checked_env=True)


def _otlp_provider() -> Any | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:  # no exporter installed: the global provider (if any) gets the spans
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "nyxnb"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _tracer() -> Any | None:
    if not _state["checked_env"]:
        _state["checked_env"] = True
        if os.environ.get("NYXNB_OTEL") == "1":
            enable_tracing(capture_prompts=os.environ.get("NYXNB_OTEL_CAPTURE_PROMPTS") == "1")
    return _state["tracer"]


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span (or nothing when tracing is off); None-valued attributes are left out."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(name, attributes=attrs) as current:
        yield current


_NO_SPAN = contextlib.nullcontext(None)


def workflow_span(workflow_id: str, name: str, tenant_id: str | None) -> Any:
    """Span of one workflow run."""
    return span(f"workflow {name}", nyxnb__workflow__id=workflow_id, nyxnb__tenant__id=tenant_id)


def step_span(workflow_id: str, name: str, step_type: str, order: int) -> Any:
    """Span of one step."""
    return span(
        f"step {name}",
        nyxnb__workflow__id=workflow_id,
        nyxnb__step__name=name,
        nyxnb__step__type=step_type,
        nyxnb__step__order=order,
    )


def call_span(workflow_id: str, step: str, chain: list[str], model: str | None,
              item_idx: int | None, prompt: str) -> Any:  # fmt: skip
    """Span of one provider call (the fallback chain); attributes completed by :func:`record`."""
    if _tracer() is None:  # off: nothing built per call
        return _NO_SPAN
    first = chain[0].partition(":") if chain else ("", "", "")
    return span(
        f"chat {model or first[2] or first[0]}",
        gen_ai__operation__name="chat",
        gen_ai__system=first[0] or None,
        gen_ai__request__model=model or first[2] or None,
        nyxnb__workflow__id=workflow_id,
        nyxnb__step__name=step,
        nyxnb__item__index=item_idx,
        gen_ai__prompt=prompt if _state["prompts"] else None,
    )


def record(current: Any, *, provider: str, model: str, input_tokens: int, output_tokens: int,
           attempts: int) -> None:  # fmt: skip
    """Set the answer's attributes on a call span (no-op when tracing is off)."""
    if current is None:
        return
    current.set_attribute("gen_ai.system", provider)
    current.set_attribute("gen_ai.response.model", model)
    if not current.attributes.get("gen_ai.request.model"):  # the step named no model
        current.set_attribute("gen_ai.request.model", model)
    current.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    current.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    current.set_attribute("nyxnb.attempts", attempts)
