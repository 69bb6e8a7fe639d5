"""Rows of the generated steps (planned in :mod:`nyxnb.autosteps`), and items parsed from an output.

Generated steps are ``auto_generated = true`` and ordered after every user step: one
``consistency-check`` (checks all outputs against each other) and one ``implementation-prompt``
per item of the designated fan-out step.
"""

from __future__ import annotations

import json
import re
from typing import Any

from nyxnb.autosteps import GeneratedStep
from nyxnb.spec import ItemSpec
from nyxnb.store.models import PENDING, new_id, utcnow


def generated_rows(
    wanted: list[GeneratedStep],
    *,
    workflow_id: str,
    tenant_id: str,
    first_order: int,
    chain: list[str],
    model: str | None,
) -> list[dict[str, Any]]:
    """Full ``workflow_steps`` rows for the generated steps."""
    now = utcnow()
    return [
        {
            **w.as_values(),
            "id": new_id(),
            "tenant_id": tenant_id,
            "workflow_id": workflow_id,
            "order": first_order + i,
            "provider": chain[0],
            "fallback": chain[1:],
            "model": model,
            "status": PENDING,
            "auto_generated": True,
            "created_at": now,
            "updated_at": now,
        }
        for i, w in enumerate(wanted)
    ]


_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.+)$")


def parse_items(text: str) -> list[ItemSpec]:
    """Fan-out items from a step's output: a JSON list, markdown sections, or a list."""
    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(\[.*?\])\s*```", stripped, re.S)
    candidate = fenced.group(1) if fenced else stripped
    if candidate.startswith("["):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list) and data:
            return [_item_from_json(x) for x in data]
    sections = _markdown_sections(stripped)
    if sections:
        return sections
    return [
        ItemSpec(heading=m.group(1).strip())
        for line in stripped.splitlines()
        if (m := _LIST_ITEM.match(line))
    ]


def _item_from_json(value: Any) -> ItemSpec:
    if isinstance(value, dict):
        heading = str(value.get("heading") or value.get("title") or value.get("name") or "item")
        return ItemSpec(
            heading=heading, body=str(value.get("body") or value.get("description") or "")
        )
    return ItemSpec(heading=str(value))


def _markdown_sections(text: str) -> list[ItemSpec]:
    items: list[ItemSpec] = []
    body: list[str] = []
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            if items:
                items[-1] = ItemSpec(heading=items[-1].heading, body="\n".join(body).strip())
            items.append(ItemSpec(heading=match.group(1)))
            body = []
        elif items:
            body.append(line)
    if items:
        items[-1] = ItemSpec(heading=items[-1].heading, body="\n".join(body).strip())
    return items
