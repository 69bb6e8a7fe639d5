"""Shared fixtures: environment isolation, stores on every backend, the fake provider server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from nyxnb.store import Store, open_store
from nyxnb.testing import FakeProviderServer

PG_URL_ENV = "NYXNB_TEST_PG_URL"
_ISOLATED_PREFIXES = ("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_", "NYXNB_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a real key, endpoint or store URL from the developer's environment."""
    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES) and name != PG_URL_ENV:
            monkeypatch.delenv(name, raising=False)


def pg_server_url() -> str | None:
    """The PostgreSQL server .ci/run started, if any."""
    return os.environ.get(PG_URL_ENV) or None


def make_pg_database() -> tuple[str, str]:
    """Create a fresh database on the test server; returns (url, name)."""
    server = pg_server_url()
    assert server
    name = "nyx_" + uuid.uuid4().hex[:12]
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + name, name


def drop_pg_database(name: str) -> None:
    """Drop a database made by :func:`make_pg_database`."""
    admin = create_engine(pg_server_url() or "", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'nyxnb.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database (skips when no server is configured)."""
    if not pg_server_url():
        pytest.skip(f"{PG_URL_ENV} not set")
    url, name = make_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh store URL on each backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh, empty store on each backend."""
    s = open_store(store_url)
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    """A fresh SQLite store (for tests that are about the embedded store only)."""
    s = open_store(sqlite_url)
    yield s
    s.dispose()


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    """The loopback fake of the three providers, with every SDK pointed at it."""
    with FakeProviderServer() as srv:
        srv.patch_env(monkeypatch)
        yield srv
