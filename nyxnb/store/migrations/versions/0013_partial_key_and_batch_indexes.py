"""Partial indexes: ``step_items (step_id, key)`` and ``llm_calls (batch_id)`` only where set

Only a dataset's item rows have a ``key`` and only batched calls a ``batch_id``: every typed
item and every live call wrote an index entry for NULL. Lookups (``key = ?``, ``batch_id = ?``)
imply the condition, so both backends still use the indexes for them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 02:20:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _where(column: str) -> dict[str, Any]:
    condition = sa.text(f'"{column}" IS NOT NULL')
    return {"sqlite_where": condition, "postgresql_where": condition}


def upgrade() -> None:
    op.drop_index("ix_step_items_step_id_key", table_name="step_items")
    op.create_index("ix_step_items_step_id_key", "step_items", ["step_id", "key"], **_where("key"))
    op.drop_index("ix_llm_calls_batch_id", table_name="llm_calls")
    op.create_index("ix_llm_calls_batch_id", "llm_calls", ["batch_id"], **_where("batch_id"))


def downgrade() -> None:
    op.drop_index("ix_llm_calls_batch_id", table_name="llm_calls")
    op.create_index("ix_llm_calls_batch_id", "llm_calls", ["batch_id"])
    op.drop_index("ix_step_items_step_id_key", table_name="step_items")
    op.create_index("ix_step_items_step_id_key", "step_items", ["step_id", "key"])
