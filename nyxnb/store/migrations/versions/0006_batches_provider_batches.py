"""provider_batches table; llm_calls cache-write tokens, batch id and service tier

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_batches",
        sa.Column("workflow_id", sa.String(length=36), nullable=False),
        sa.Column("step_id", sa.String(length=36), nullable=True),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("batch_id", sa.String(length=120), nullable=True),
        sa.Column("custom_ids", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["step_id"],
            ["workflow_steps.id"],
            name=op.f("fk_provider_batches_step_id_workflow_steps"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_provider_batches_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_provider_batches_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_batches")),
    )
    with op.batch_alter_table("provider_batches", schema=None) as batch_op:
        for column in ("batch_id", "step_id", "tenant_id", "workflow_id"):
            batch_op.create_index(batch_op.f(f"ix_provider_batches_{column}"), [column])
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cache_write_tokens", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("batch_id", sa.String(length=120), nullable=True))
        batch_op.add_column(
            sa.Column("service_tier", sa.String(length=16), nullable=False, server_default="live")
        )
        batch_op.create_index(batch_op.f("ix_llm_calls_batch_id"), ["batch_id"])


def downgrade() -> None:
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_llm_calls_batch_id"))
        batch_op.drop_column("service_tier")
        batch_op.drop_column("batch_id")
        batch_op.drop_column("cache_write_tokens")
    with op.batch_alter_table("provider_batches", schema=None) as batch_op:
        for column in ("batch_id", "step_id", "tenant_id", "workflow_id"):
            batch_op.drop_index(batch_op.f(f"ix_provider_batches_{column}"))
    op.drop_table("provider_batches")
