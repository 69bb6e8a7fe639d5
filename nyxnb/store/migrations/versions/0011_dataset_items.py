"""datasets: a fan-out item's dataset key and row

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # plain ADD COLUMN (no batch copy): SQLite keeps the table and its tenancy triggers
    op.add_column("step_items", sa.Column("key", sa.Text(), nullable=True))
    op.add_column("step_items", sa.Column("data", sa.JSON(), nullable=True))
    op.create_index("ix_step_items_step_id_key", "step_items", ["step_id", "key"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_step_items_step_id_key", table_name="step_items")
    with op.batch_alter_table("step_items", schema=None) as batch_op:
        batch_op.drop_column("data")
        batch_op.drop_column("key")
