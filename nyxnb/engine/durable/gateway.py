"""The engine's one way to the database: reconnect-retrying writes, fenced by the run's lease.

Every write transaction of the engine goes through :meth:`Gateway.begin`: a connection the
server dropped (a PostgreSQL restart) is retried on a fresh one (:meth:`Store.connect`), and in
a run's gateway (:meth:`Gateway.fenced`) the transaction first re-reads the run's lease and is
refused with :class:`~nyxnb.errors.LeaseLost` unless the lease is still the run's -- so a run
that stood still past its TTL and woke after another run took over writes nothing: no step,
no item, no batch row, no ledger row.  The gateway has no ``engine``: the run layer cannot
reach the raw engine (``tests/test_layers.py`` walks the code for any ``.engine.begin(`` or
``.engine.connect(`` under ``nyxnb/engine/``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection

from nyxnb.engine.durable.lease import check_fence
from nyxnb.store import models
from nyxnb.store.database import Database, Store
from nyxnb.store.tenancy import NyxSession


class Gateway:
    """A store as the engine uses it; a run's is fenced by its lease (:meth:`fenced`)."""

    def __init__(
        self, store: Store, workflow_id: str | None = None, owner: str | None = None
    ) -> None:
        self._store = store
        self.workflow_id, self.owner = workflow_id, owner

    @staticmethod
    def of(db: Database) -> Gateway:
        """``db`` itself if it is a gateway, else an unfenced gateway to the store."""
        if isinstance(db, Gateway):
            return db
        if not isinstance(db, Store):
            raise TypeError(f"expected a Store or a Gateway, got {type(db).__name__}")
        return Gateway(db)

    def fenced(self, workflow_id: str, owner: str) -> Gateway:
        """The gateway of one run: every write transaction checks that ``owner`` holds the lease."""
        return Gateway(self._store, workflow_id, owner)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._store.dialect

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction (reconnect-retrying); refused if a fenced run lost its lease."""
        with self._store.begin() as conn:
            self.fence(conn)
            yield conn

    def connect(self) -> Connection:
        """A connection (reconnect-retrying) for a caller that runs its own transactions."""
        return self._store.connect()

    def fence(self, conn: Connection) -> None:
        """Raise :class:`~nyxnb.errors.LeaseLost` unless this run still holds its lease."""
        if self.workflow_id is not None and self.owner is not None:
            check_fence(conn, self.workflow_id, self.owner)

    def transient(self, exc: BaseException) -> bool:
        """True for a database error worth retrying: the server went away (not SQLite)."""
        return self._store.transient(exc)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for read-only work (never takes SQLite's write lock)."""
        with self._store.reading() as conn:
            yield conn

    @contextmanager
    def session(
        self, tenant_id: str | None = None, *, read_only: bool = False
    ) -> Iterator[NyxSession]:
        """An ORM session (tenant-scoped when ``tenant_id`` is set); not fenced."""
        with self._store.session(tenant_id, read_only=read_only) as s:
            yield s

    @contextmanager
    def tenant(self, slug_or_id: str, *, read_only: bool = False) -> Iterator[NyxSession]:
        """A session that sees only one tenant's rows."""
        with self._store.tenant(slug_or_id, read_only=read_only) as s:
            yield s

    def find_tenant(self, slug_or_id: str) -> models.Tenant:
        """The tenant with this slug or id, or :class:`~nyxnb.errors.NotFound`."""
        return self._store.find_tenant(slug_or_id)

    def tenant_id(self, slug_or_id: str | None) -> str | None:
        """The id of a tenant given by slug or id (None for no scope)."""
        return self._store.tenant_id(slug_or_id)
