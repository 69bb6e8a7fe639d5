"""Schema versions: Alembic revisions applied on open; a newer store is refused."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from .errors import StoreVersionError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The newest revision this nyxnb knows; a test keeps it equal to Alembic's head.
HEAD = "0001"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config bound to ``engine`` (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The store's Alembic revision, or None for an empty store."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine: Engine) -> None:
    """Create or upgrade the schema to :data:`HEAD`; refuse a store from a newer nyxnb."""
    current = current_revision(engine)
    if current == HEAD:
        return
    cfg = alembic_config(engine)
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    if current is not None and current not in known:
        raise StoreVersionError(
            f"the store is at schema revision {current!r}, newer than this nyxnb ({HEAD!r})",
            hint="upgrade nyxnb (pip install -U nyxnb) or open another store with --db",
        )
    command.upgrade(cfg, "head")
