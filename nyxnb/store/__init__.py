"""The store: ORM tables, ``open_store``, tenant scoping, the Alembic schema revisions.

Owns every table and how a session reaches it (SQLite WAL embedded, PostgreSQL for teams).
May import the ground modules (``nyxnb.errors``, ``nyxnb.paths``) and nothing else of nyxnb.
"""

from nyxnb.store.database import (
    ENV_URL,
    Database,
    Store,
    default_db_path,
    open_store,
    resolve_url,
)
from nyxnb.store.tenancy import NyxSession

__all__ = [
    "ENV_URL",
    "Database",
    "NyxSession",
    "Store",
    "default_db_path",
    "open_store",
    "resolve_url",
]
