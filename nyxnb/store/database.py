"""Open a store: engine, sessions, schema upgrades and tenant scoping.

Where the default store lives (first match wins):

1. the ``url`` argument (the CLI's ``--db``), then the ``NYXNB_DB_URL`` environment variable;
2. ``data/nyxnb.db`` under the *project root*: the nearest ancestor of the current directory
   (itself included) holding both ``pyproject.toml`` and a ``data/`` folder -- so the repo root and
   ``notebooks/`` resolve to the same file;
3. ``data/nyxnb.db`` of the checkout the package was imported from (an editable install);
4. ``~/.nyxnb/nyxnb.db``.

SQLite runs in WAL mode with ``synchronous=NORMAL``, a 30 s busy timeout and ``BEGIN IMMEDIATE``
transactions, so a notebook kernel and a CLI process can write to one file at once: the second
writer waits for the first (commits take ~50 us) instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Table,
    create_engine,
    event,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import sessionmaker

from nyxnb.errors import CrossTenantWrite, NotFound, StoreError, StoreUnavailable, redact
from nyxnb.paths import PACKAGE_ROOT, find_project_root
from nyxnb.store import checkpoint, models
from nyxnb.store.schema import upgrade_schema
from nyxnb.store.tenancy import NyxSession

ENV_URL = "NYXNB_DB_URL"
READ_ONLY = "nyxnb_read_only"
#: How long a write waits for a PostgreSQL server that dropped its connections (a restart).
RECONNECT_S = 10.0


def default_db_path() -> Path:
    """Where the embedded store lives when no URL is given (see the module docstring)."""
    root = find_project_root()
    if root is None and (PACKAGE_ROOT / "pyproject.toml").is_file():
        root = PACKAGE_ROOT if (PACKAGE_ROOT / "data").is_dir() else None
    if root is not None:
        return root / "data" / "nyxnb.db"
    return Path.home() / ".nyxnb" / "nyxnb.db"


def resolve_url(url: str | None = None) -> str:
    """The store URL to use: explicit, then ``NYXNB_DB_URL``, then the default SQLite file."""
    if url:
        return url
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    path = default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _enable_wal(cur: Any, timeout_s: float = 30.0) -> None:
    """Switch to WAL; two processes opening a fresh file at once may briefly collide here.

    Changing the journal mode needs an exclusive lock and SQLite does not always wait on
    busy_timeout for it, so retry until the other opener is done.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _on_event_loop() -> bool:
    """True when called (synchronously) from a coroutine: sleeping here would stall the loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _busy_timeout_ms() -> int:
    """SQLite's busy timeout: 30 s, or ``NYXNB_SQLITE_BUSY_TIMEOUT_S`` (tests shorten it)."""
    return int(float(os.environ.get("NYXNB_SQLITE_BUSY_TIMEOUT_S") or 30) * 1000)


def _idle_transaction_ms() -> int:
    """PostgreSQL's ``idle_in_transaction_session_timeout`` for nyxnb's connections.

    A process stalled inside a transaction (SIGSTOP, a frozen VM) would hold its row locks and
    block every other worker on those rows forever; the server ends such a session after 300 s
    (``NYXNB_PG_IDLE_TX_S``), and the stalled process's next write fails and is fenced off.
    nyxnb never waits on a provider inside a transaction, so a healthy run never hits it.
    """
    return int(float(os.environ.get("NYXNB_PG_IDLE_TX_S") or 300) * 1000)


def _pg_options(url: str) -> str:
    """libpq ``options`` for a PostgreSQL URL: its own (``?options=...``) and the idle timeout."""
    given = make_url(url).query.get("options") or ()
    own = " ".join([given] if isinstance(given, str) else given)
    return f"{own} -c idle_in_transaction_session_timeout={_idle_transaction_ms()}".strip()


def _configure_sqlite(engine: Engine) -> None:
    busy_ms = _busy_timeout_ms()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        _enable_wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute(f"PRAGMA wal_autocheckpoint = {checkpoint.SAFETY_PAGES}")  # see checkpoint.py
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: waits on busy_timeout instead of
        # failing later when a read transaction tries to upgrade to a write.  Read-only
        # work (Store.reading) begins deferred and never makes a writer wait.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database(Protocol):
    """What the engine uses of a store: a :class:`Store`, or the engine's gateway to one
    (``nyxnb.engine.durable.gateway``), which has no raw engine to write around its fence."""

    @property
    def dialect(self) -> str: ...

    def begin(self) -> AbstractContextManager[Connection]: ...

    def connect(self) -> Connection: ...

    def fence(self, conn: Connection) -> None: ...

    def transient(self, exc: BaseException) -> bool: ...

    def reading(self) -> AbstractContextManager[Connection]: ...

    def session(
        self, tenant_id: str | None = None, *, read_only: bool = False
    ) -> AbstractContextManager[NyxSession]: ...

    def tenant(
        self, slug_or_id: str, *, read_only: bool = False
    ) -> AbstractContextManager[NyxSession]: ...

    def find_tenant(self, slug_or_id: str) -> models.Tenant: ...

    def tenant_id(self, slug_or_id: str | None) -> str | None: ...


class Store:
    """An open store: ``session()`` for admin work, ``tenant(slug)`` for a scoped view."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url
        self._sessions = sessionmaker(engine, class_=NyxSession, expire_on_commit=False)
        reader = engine.execution_options(**{READ_ONLY: True})
        self._read_sessions = sessionmaker(reader, class_=NyxSession, expire_on_commit=False)
        self._wal_path = _sqlite_file(engine)  # its log is checkpointed off the event loop
        if self._wal_path is not None:
            checkpoint.watch(self._wal_path)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def session(
        self, tenant_id: str | None = None, *, read_only: bool = False
    ) -> Iterator[NyxSession]:
        """A session that commits on success and rolls back on error.

        ``read_only`` sessions never take SQLite's write lock, so inspecting a store never
        makes a running workflow wait.
        """
        maker = self._read_sessions if read_only else self._sessions
        with maker() as s:
            s.tenant_id = tenant_id
            with s.begin():
                yield s

    @contextmanager
    def tenant(self, slug_or_id: str, *, read_only: bool = False) -> Iterator[NyxSession]:
        """A session that sees only one tenant's rows (plus global personas)."""
        tenant = self.find_tenant(slug_or_id)
        with self.session(tenant.id, read_only=read_only) as s:
            yield s

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction; one that could not start because the server dropped its
        connections (a PostgreSQL restart) is retried on a fresh connection for up to
        :data:`RECONNECT_S`.  Errors inside the transaction roll it back and propagate.
        """
        conn = self.connect()
        with conn, conn.begin():
            yield conn

    def connect(self) -> Connection:
        """A connection; one the server dropped (a PostgreSQL restart) is retried on a fresh one.

        Off the event loop (the CLI, admin work) it waits up to :data:`RECONNECT_S` for the server.
        On a running event loop it never sleeps: it tries again at once on a fresh pool and then
        raises, and the engine's async call sites retry with ``asyncio.sleep`` (a blocking wait
        here would stall every workflow sharing the loop).
        """
        deadline, delay = time.monotonic() + RECONNECT_S, 0.05
        tries = 2 if _on_event_loop() else None
        while True:
            try:
                return self.engine.connect()  # PostgreSQL: pool_pre_ping replaces a dead one
            except OperationalError:
                if self.dialect == "sqlite" or time.monotonic() + delay > deadline:
                    raise
                self.engine.dispose()  # every pooled connection is dead after a restart
                if tries is not None:
                    tries -= 1
                    if tries == 0:
                        raise
                    continue
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def fence(self, conn: Connection) -> None:
        """Checked first in every write transaction of a run (a fenced store refuses a lost
        lease); the plain store checks nothing."""

    def transient(self, exc: BaseException) -> bool:
        """True for a database error worth retrying: the server went away (not SQLite)."""
        return isinstance(exc, OperationalError) and self.dialect != "sqlite"

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for read-only work: on SQLite it never takes the write lock."""
        with self.connect().execution_options(**{READ_ONLY: True}) as conn:
            yield conn

    def find_tenant(self, slug_or_id: str) -> models.Tenant:
        """The tenant with this slug or id, or :class:`NotFound`."""
        with self._read_sessions() as s:
            found = s.scalar(
                select(models.Tenant).where(
                    (models.Tenant.slug == slug_or_id) | (models.Tenant.id == slug_or_id)
                )
            )
        if found is None:
            raise NotFound("tenant", slug_or_id, hint="list tenants with `nyxnb tenant list`")
        return found

    def tenant_id(self, slug_or_id: str | None) -> str | None:
        """The id of a tenant given by slug or id, or None for no scope; :class:`NotFound`."""
        return self.find_tenant(slug_or_id).id if slug_or_id else None

    def table_names(self) -> list[str]:
        """Every table of the store (for inspection and checksums)."""
        return sorted(inspect(self.engine).get_table_names())

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self._wal_path is not None:
            checkpoint.unwatch(self._wal_path)
            self._wal_path = None

    def __repr__(self) -> str:
        return f"Store({self.url.render_as_string(hide_password=True)!r})"


def _sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite store (None: another backend, or in memory)."""
    name = engine.url.database
    if engine.dialect.name != "sqlite" or not name or name == ":memory:":
        return None
    if name.startswith("file:"):  # a URI filename: left to SQLite's own checkpoints
        return None
    return str(Path(name).resolve())


def _make_engine(url: str) -> Engine:
    try:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {
                "timeout": _busy_timeout_ms() / 1000,
                "check_same_thread": False,
            }
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"options": _pg_options(url)}
        engine = create_engine(url, **kwargs)
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as exc:
        raise StoreUnavailable(
            f"unsupported or malformed store URL {redact(url)!r}: {redact(str(exc))}",
            hint="use sqlite:///path/to/file.db or postgresql+psycopg://user@host/db",
        ) from None
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    event.listen(engine, "handle_error", _tenancy_refusal)
    return engine


#: The text the tenancy triggers (revision 0008) raise with.
TENANCY_MARK = "nyxnb-tenancy: "


def _tenancy_refusal(context: Any) -> None:
    """A tenancy trigger's refusal, as :class:`CrossTenantWrite` (every engine, every write)."""
    text_ = str(context.original_exception)
    if TENANCY_MARK in text_:
        detail = text_.split(TENANCY_MARK, 1)[1].splitlines()[0].strip()
        raise CrossTenantWrite(detail) from None


def _sqlite_file_problem(engine: Engine, reason: str) -> StoreError | None:
    """A clear error for a SQLite file that is not a database, truncated or read-only."""
    path = engine.url.database or ""
    lowered = reason.lower()
    if "not a database" in lowered or "malformed" in lowered or "disk i/o" in lowered:
        return StoreError(
            f"the store file {path} is corrupt or truncated ({reason})",
            hint="restore it from a backup, or point --db / NYXNB_DB_URL at another file",
        )
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        path = path.removeprefix("file:").split("?", 1)[0]
        return StoreUnavailable(
            f"the store file {path} cannot be written ({reason})",
            hint="check the file's and its folder's permissions, or use another --db file",
        )
    return None


def sqlite_path_problem(engine: Engine) -> tuple[str, str] | None:
    """What is wrong with a SQLite store's path, and the fix: missing folder, read-only file."""
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    path = Path(name).expanduser().resolve()
    folder = path.parent
    fix = "pass --db / NYXNB_DB_URL a sqlite:/// path you can write to"
    if not folder.is_dir():
        return f"cannot open the store {path}: folder {folder} does not exist", (
            f"create it (mkdir -p {folder}) or {fix}"
        )
    if path.exists() and not os.access(path, os.W_OK):
        return f"cannot open the store {path}: the file is read-only", (
            f"make it writable (chmod u+w {path}) or {fix}"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot open the store {path}: no permission to write in {folder}", (
            "SQLite writes its -wal and -shm files next to the store; " + fix
        )
    return None


def store_error(exc: DatabaseError, engine: Engine | None = None) -> StoreError:
    """A database error from the driver as one clear :class:`StoreError` line."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
    if engine is not None and engine.dialect.name == "sqlite":
        if problem := _sqlite_file_problem(engine, reason):
            return problem
    lowered = reason.lower()
    if "database is locked" in lowered:
        hint = "another program holds the store's write lock; close it or retry"
    elif "full" in lowered or "no space" in lowered:
        hint = "free disk space (or raise the database's size limit), then retry"
    else:
        hint = "check the store and retry; completed work is kept"
    return StoreError(f"store error ({type(exc.orig or exc).__name__}): {reason}", hint=hint)


def _sqlite_problem(engine: Engine, reason: str) -> StoreError | None:
    """What is wrong with a SQLite store: its path (folder, permissions), then the file itself."""
    if engine.dialect.name != "sqlite":
        return None
    if path_problem := sqlite_path_problem(engine):
        return StoreUnavailable(path_problem[0], hint=path_problem[1])
    return _sqlite_file_problem(engine, reason)


def _check_reachable(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master")  # reads the header
    except DatabaseError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise _sqlite_problem(engine, reason) or StoreUnavailable(
            f"cannot reach the store at {engine.url.render_as_string(hide_password=True)}: "
            f"{redact(reason)}",
            hint="check the --db URL / NYXNB_DB_URL and that the server is running",
        ) from None


def open_store(url: str | None = None, *, upgrade: bool = True) -> Store:
    """Open (creating or upgrading as needed) the store at ``url``; see module docs for defaults."""
    resolved = resolve_url(url)
    engine = _make_engine(resolved)
    _check_reachable(engine)
    if upgrade:
        try:
            upgrade_schema(engine)
        except DatabaseError as exc:
            engine.dispose()
            raise store_error(exc, engine) from None
    return Store(engine)


def insert_ignoring_duplicates(conn: Connection, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the connection's dialect."""
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()  # type: ignore[no-any-return]
