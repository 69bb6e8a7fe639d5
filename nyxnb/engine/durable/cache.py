"""Content-addressed LLM response cache, stored durably in the ``llm_cache`` table.

The key is the sha256 of (provider or endpoint name, model, system prompt, messages, max_tokens,
temperature, and any of top_p, stop, seed, reasoning and service tier that is set):
re-running an unchanged workflow makes no provider call and costs nothing.  Only complete answers
(stop reason ``end``) are cached.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, Table, select

from nyxnb.providers import structured
from nyxnb.providers.base import STOP_END, Completion, CompletionRequest
from nyxnb.store.database import insert_ignoring_duplicates
from nyxnb.store.models import LlmCache, utcnow

_TABLE: Table = LlmCache.__table__  # type: ignore[assignment]


def cache_key(provider: str, model: str, request: CompletionRequest) -> str:
    """The content address of a request sent to ``provider``/``model``."""
    payload = {
        "provider": provider,
        "model": model,
        "system": request.system,
        "messages": [[m.role, m.content] for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        **call_knobs(request),
    }
    if request.output_schema is not None:  # a structured answer is another answer
        payload["output_schema"] = structured.schema_text(request.output_schema)
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def call_knobs(request: CompletionRequest) -> dict[str, Any]:
    """The request's sampling, reasoning and tier settings that are set (none: {}).

    Only set ones are keyed, so a request without them keeps the key it always had.
    """
    knobs = {
        "top_p": request.top_p,
        "stop": list(request.stop) or None,
        "seed": request.seed,
        "reasoning_effort": request.reasoning_effort,
        "reasoning_budget": request.reasoning_budget,
        "service_tier": request.service_tier,
    }
    return {k: v for k, v in knobs.items() if v is not None}


def lookup(conn: Connection, key: str) -> Completion | None:
    """The cached answer for ``key``, if any."""
    row = conn.execute(select(_TABLE).where(_TABLE.c.id == key)).mappings().first()
    if row is None:
        return None
    return Completion(
        text=row["text"],
        stop_reason=row["stop_reason"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        model=row["model"],
        provider=row["provider"],
    )


def store_answer(conn: Connection, tenant_id: str, key: str, answer: Completion) -> None:
    """Remember a complete answer (no-op for truncated/refused ones or a known key)."""
    row = answer_row(tenant_id, key, answer)
    if row is not None:
        store_rows(conn, [row])


def store_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert cache rows made by :func:`answer_row`, skipping keys already present."""
    if rows:
        conn.execute(insert_ignoring_duplicates(conn, _TABLE), rows)


def answer_row(tenant_id: str, key: str, answer: Completion) -> dict[str, Any] | None:
    """The ``llm_cache`` row (of the run's tenant) for a complete answer; None for truncated or
    refused ones."""
    if answer.stop_reason != STOP_END:
        return None
    now = utcnow()
    return {
        "id": key,
        "tenant_id": tenant_id,
        "provider": answer.provider,
        "model": answer.model,
        "text": answer.text,
        "stop_reason": answer.stop_reason,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "created_at": now,
        "updated_at": now,
    }
