"""llm_cache: every cached answer belongs to one tenant

A tenant-scoped session read every tenant's cached answers: ``llm_cache`` carried no tenant.
Its rows now carry ``tenant_id`` (the key stays content-addressed, salted by tenant unless the
spec shares the cache), so a tenant session sees its own answers only, and a deleted tenant's
answers go with it.  Rows written before this revision cannot be attributed to a tenant (their
key is a one-way hash), so they are dropped: the next run of those prompts calls again once.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 21:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM llm_cache")
    with op.batch_alter_table("llm_cache", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=36), nullable=False))
        batch_op.create_index(batch_op.f("ix_llm_cache_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_llm_cache_tenant_id_tenants"),
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("llm_cache", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_llm_cache_tenant_id_tenants"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_llm_cache_tenant_id"))
        batch_op.drop_column("tenant_id")
