"""revisions: lineage, reused step outputs, experiments and scores

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision_of", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("experiment_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("variant", sa.String(length=200), nullable=True))
        batch_op.create_index("ix_workflows_experiment_id", ["experiment_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_workflows_revision_of_workflows",
            "workflows",
            ["revision_of"],
            ["id"],
            ondelete="SET NULL",
        )
    with op.batch_alter_table("workflow_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reused_from", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("score", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workflow_steps", schema=None) as batch_op:
        batch_op.drop_column("score")
        batch_op.drop_column("reused_from")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_constraint("fk_workflows_revision_of_workflows", type_="foreignkey")
        batch_op.drop_index("ix_workflows_experiment_id")
        batch_op.drop_column("variant")
        batch_op.drop_column("experiment_id")
        batch_op.drop_column("revision_of")
