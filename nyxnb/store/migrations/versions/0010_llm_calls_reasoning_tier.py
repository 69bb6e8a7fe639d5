"""llm_calls: reasoning tokens, the provider's service tier, kept thinking text

``service_tier`` keeps meaning how a call was processed (``live`` or ``batch``); ``api_tier`` is
the provider's own tier the call was served at (``flex``, ``priority``, ``default``): the two are
independent axes of the price (genai-prices' ``processing`` and ``service_tier`` contexts).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reasoning_tokens", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("api_tier", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("thinking", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_column("thinking")
        batch_op.drop_column("api_tier")
        batch_op.drop_column("reasoning_tokens")
