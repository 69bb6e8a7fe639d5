"""Copy a fan-out's dataset into ``step_items`` when its workflow is created (the frozen copy).

Rows stream from :mod:`nyxnb.datasets` in batches straight into the store: one
``step_items`` row per dataset row (its key, heading and columns), so a resume never reads the
file again and a million rows never sit in memory whole.  The rows' digest goes into the step's
config: a revision whose dataset changed is not taken over whole, only row by row
(:mod:`nyxnb.engine.iterate.revisions`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from nyxnb.datasets import open_dataset
from nyxnb.datasets.reader import DatasetRow
from nyxnb.engine.durable.records import ITEMS
from nyxnb.errors import SpecError
from nyxnb.sources import ItemsSource
from nyxnb.store.models import PENDING, new_id, utcnow
from nyxnb.templates import ItemView, render


def _heading(source: ItemsSource, row: DatasetRow, idx: int, where: str) -> str:
    if source.heading is None:
        return row.key
    try:
        view = ItemView.row(row.key, idx, row.columns, row.key)
        return render(source.heading, item=view).strip() or row.key
    except Exception as exc:  # noqa: BLE001 - a user template: whatever it raises is a spec error
        raise SpecError(
            f"heading template on row {idx + 1}: {exc}", field=f"{where}.heading"
        ) from None


def _item(step: dict[str, Any], idx: int, heading: str, row: DatasetRow) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": new_id(),
        "tenant_id": step["tenant_id"],
        "step_id": step["id"],
        "idx": idx,
        "heading": heading,
        "input": "",
        "status": PENDING,
        "key": row.key,
        "data": row.columns,
        "created_at": now,
        "updated_at": now,
    }


def materialise(session: Session, step: dict[str, Any], source: ItemsSource, where: str) -> str:
    """Write the dataset's rows as the step's items (keys checked first); returns their digest."""
    digest, idx = hashlib.sha256(), 0
    with open_dataset(source, where) as rows:
        rows.check_keys()
        for batch in rows.batches():
            items = []
            for row in batch:
                items.append(_item(step, idx, _heading(source, row, idx, where), row))
                digest.update(json.dumps([row.key, row.columns], sort_keys=True).encode())
                idx += 1
            session.execute(insert(ITEMS), items)
    if idx == 0:
        raise SpecError("the dataset has no rows", field=where, hint="give at least one row")
    return digest.hexdigest()
