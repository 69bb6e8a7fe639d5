"""Schema versions: Alembic revisions applied on open; a newer store is refused."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

from nyxnb.errors import StoreVersionError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The newest revision this nyxnb knows; a test keeps it equal to Alembic's head.
HEAD = "0014"


if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config(engine: Engine) -> Config:
    """An Alembic config bound to ``engine`` (no alembic.ini needed)."""
    from alembic.config import Config  # alembic is imported only when a schema changes

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The store's Alembic revision, or None for an empty store."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_schema(engine: Engine) -> None:
    """Create or upgrade the schema to :data:`HEAD`; refuse a store from a newer nyxnb."""
    current = current_revision(engine)
    if current == HEAD:
        return
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(engine)
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    if current is not None and current not in known:
        raise StoreVersionError(
            f"the store is at schema revision {current!r}, newer than this nyxnb ({HEAD!r})",
            hint="upgrade nyxnb (pip install -U nyxnb) or open another store with --db",
        )
    command.upgrade(cfg, "head")
