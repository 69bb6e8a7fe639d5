"""Alembic environment: runs against the engine nyxnb hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from nyxnb.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:  # `alembic revision --autogenerate` from the command line
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Two processes opening a fresh store at once: the second waits, then no-ops.
                connection.execute(text("SELECT pg_advisory_xact_lock(7212026)"))
            context.run_migrations()


run_migrations_online()
