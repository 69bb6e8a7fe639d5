"""Tenancy triggers read a parent's tenant from a covering index, not from its row

On SQLite, ``workflows.tenant_id`` comes after ``spec`` and ``workflow_steps.tenant_id`` after
``config`` and ``output`` in each row.  A spec with inline ``items:`` stores every item in both
(2.4 MB for 20,000 items), so each trigger of revision 0008 -- one per inserted item row and per
ledger row -- walked that row's overflow pages to reach ``tenant_id``: a fan-out's cost grew with
its size squared (16,000 typed items: 1.4 ms an item, against 0.25 at 4,000).  An index on
``(id, tenant_id)`` answers the check alone; SQLite's planner prefers the primary key's own
index (one row, then the table), so the triggers name the new index with ``INDEXED BY``.
PostgreSQL keeps large values out of line (TOAST) and its triggers are left as they are; it gets
the same indexes, so both backends match the models.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 05:00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The parents whose rows hold large values before ``tenant_id``.
PARENTS = ("workflows", "workflow_steps")


def index_name(parent: str) -> str:
    return f"ix_{parent}_id_tenant_id"


def _triggers() -> ModuleType:
    """Revision 0008, which builds the triggers (a revision file is not an importable module)."""
    path = Path(__file__).with_name("0008_tenancy_parent_triggers.py")
    spec = importlib.util.spec_from_file_location("nyxnb_revision_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recreate_triggers(indexed: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    rev = _triggers()
    for child, column, parent in rev.PARENT_KEYS:
        if parent in PARENTS:
            op.execute(f"DROP TRIGGER IF EXISTS {rev._name(child, column)}")
            op.execute(rev._sqlite(child, column, parent, index_name(parent) if indexed else ""))


def upgrade() -> None:
    for parent in PARENTS:
        op.create_index(index_name(parent), parent, ["id", "tenant_id"])
    _recreate_triggers(indexed=True)


def downgrade() -> None:
    _recreate_triggers(indexed=False)  # before the indexes they name are dropped
    for parent in PARENTS:
        op.drop_index(index_name(parent), table_name=parent)
