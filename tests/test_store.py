"""The store: where it lives, SQLite settings, concurrent writers, schema versions, bad URLs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

import nyxnb
import nyxnb.store.database as store_mod
from nyxnb.paths import find_project_root
from nyxnb.store import default_db_path, open_store, resolve_url
from nyxnb.store.models import Base, Tenant
from nyxnb.store.schema import HEAD, MIGRATIONS, current_revision

REPO = Path(nyxnb.__file__).resolve().parent.parent


# --- where the store lives ---------------------------------------------------------------


def test_repo_root_and_notebooks_resolve_to_the_same_file(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (REPO / "notebooks").is_dir()
    monkeypatch.chdir(REPO)
    from_root = default_db_path()
    monkeypatch.chdir(REPO / "notebooks")
    assert default_db_path() == from_root == REPO / "data" / "nyxnb.db"
    assert resolve_url() == f"sqlite:///{REPO / 'data' / 'nyxnb.db'}"


def test_nearest_project_root_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "pkg"
    for root in (outer, inner):
        (root / "data").mkdir(parents=True)
        (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (inner / "notebooks" / "deep").mkdir(parents=True)
    (outer / "nodata").mkdir()
    (outer / "nodata" / "pyproject.toml").write_text("")  # no data/: not a project root
    monkeypatch.chdir(inner / "notebooks" / "deep")
    assert default_db_path() == inner / "data" / "nyxnb.db"
    monkeypatch.chdir(outer / "nodata")
    assert find_project_root() == outer
    assert default_db_path() == outer / "data" / "nyxnb.db"


def test_env_url_overrides_and_argument_beats_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("NYXNB_DB_URL", env_url)
    monkeypatch.chdir(REPO)
    assert resolve_url() == env_url
    assert resolve_url(f"sqlite:///{tmp_path / 'arg.db'}").endswith("arg.db")
    store = open_store()
    try:
        assert store.url.database == str(tmp_path / "env.db")
    finally:
        store.dispose()
    assert (tmp_path / "env.db").is_file()


def test_outside_a_project_falls_back_to_the_checkout_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    monkeypatch.chdir(nowhere)
    assert find_project_root() is None
    # rule 3: the checkout the package was imported from (this editable install)
    assert default_db_path() == REPO / "data" / "nyxnb.db"
    # rule 4: no checkout (a wheel install) -> ~/.nyxnb/nyxnb.db
    monkeypatch.setattr(store_mod, "PACKAGE_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".nyxnb" / "nyxnb.db"
    assert resolve_url() == f"sqlite:///{tmp_path / 'home' / '.nyxnb' / 'nyxnb.db'}"
    assert (tmp_path / "home" / ".nyxnb").is_dir()


# --- SQLite settings and concurrency --------------------------------------------------


def test_sqlite_runs_in_wal_with_busy_timeout(sqlite_store: nyxnb.Store, sqlite_url: str) -> None:
    with sqlite_store.engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
        }
    assert pragma == {"journal_mode": "wal", "busy_timeout": 30000, "synchronous": 1,
                      "foreign_keys": 1}  # fmt: skip
    # WAL is a property of the file: a plain sqlite3 connection sees it too
    raw = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def _start_together(
    script: str, args: list[str], tmp_path: Path, imports: str
) -> list[subprocess.Popen[str]]:
    """One process per arg; each imports, says it is ready, and waits for the others."""
    go = tmp_path / "go"
    prelude = textwrap.dedent(f"""
        import os, sys, time
        {imports}
        open(os.path.join({str(tmp_path)!r}, "ready-" + str(os.getpid())), "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.002)
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", prelude + textwrap.dedent(script), arg],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for arg in args
    ]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break  # one died on import: _finish reports it
        time.sleep(0.01)
    go.touch()
    return procs


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        out.append((p.returncode, stdout, stderr))
    return out


WRITER_IMPORTS = (
    "from sqlalchemy import func, select; from nyxnb.store.models import Tenant; "
    "from nyxnb.store import open_store"
)
WRITER = """
url, tag = sys.argv[1].split("|")
store = open_store(url)
started = time.time()
for i in range(300):
    with store.session() as s:
        s.add(Tenant(slug=f"{tag}-{i}", name=tag))
    if i % 3 == 0:
        with store.session() as s:
            assert s.scalar(select(func.count()).select_from(Tenant)) >= i + 1
print("done", tag, started, time.time())
"""


def test_two_processes_write_one_sqlite_file_concurrently(
    sqlite_store: nyxnb.Store, sqlite_url: str, tmp_path: Path
) -> None:
    args = [f"{sqlite_url}|p1", f"{sqlite_url}|p2"]
    procs = _start_together(WRITER, args, tmp_path, WRITER_IMPORTS)
    spans = []
    for code, stdout, stderr in _finish(procs):
        assert "locked" not in stderr
        assert code == 0, stderr
        word, _tag, start, end = stdout.split()
        spans.append((float(start), float(end)))
    (s1, e1), (s2, e2) = spans
    assert s1 < e2 and s2 < e1, "the writers did not overlap"
    with sqlite_store.session() as s:
        slugs = set(s.scalars(select(Tenant.slug)))
    assert slugs == {f"{tag}-{i}" for tag in ("p1", "p2") for i in range(300)}


OPENER_IMPORTS = (
    "from nyxnb.store import open_store; from nyxnb.store.schema import current_revision; "
    "import alembic.command, alembic.script"
)
OPENER = """
store = open_store(sys.argv[1])
print(current_revision(store.engine))
"""


def test_two_processes_open_a_fresh_store_at_once(store_url: str, tmp_path: Path) -> None:
    procs = _start_together(OPENER, [store_url, store_url], tmp_path, OPENER_IMPORTS)
    for code, stdout, stderr in _finish(procs):
        assert code == 0, stderr
        assert stdout.strip() == HEAD
    store = open_store(store_url)
    try:
        with store.session() as s:
            assert s.scalar(select(func.count()).select_from(Tenant)) == 0
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        store.dispose()


# --- schema versions -------------------------------------------------------------------


def test_empty_database_gets_the_schema_at_head(store: nyxnb.Store) -> None:
    assert current_revision(store.engine) == HEAD
    assert set(store.table_names()) == set(Base.metadata.tables) | {"alembic_version"}


def test_schema_head_is_alembics_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    assert script.get_heads() == [HEAD]  # one head, and it is the one nyxnb knows


def test_models_and_migrated_schema_agree(store: nyxnb.Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    assert diffs == []


def test_store_from_a_newer_nyxnb_is_refused(store: nyxnb.Store, store_url: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    store.dispose()
    with pytest.raises(nyxnb.StoreVersionError) as err:
        open_store(store_url)
    assert "9999_future" in err.value.message
    assert "upgrade nyxnb" in err.value.hint
    # nothing was changed by the refused open
    check = open_store(store_url, upgrade=False)
    try:
        assert current_revision(check.engine) == "9999_future"
    finally:
        check.dispose()


def test_reopening_a_store_at_head_keeps_its_rows(store: nyxnb.Store, store_url: str) -> None:
    with store.session() as s:
        s.add(Tenant(slug="keep", name="Keep"))
    again = open_store(store_url)
    try:
        assert again.find_tenant("keep").name == "Keep"
    finally:
        again.dispose()


# --- unusable URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "nosuchdb://host/db",
        "sqlite+nosuchdriver:///x.db",
        "postgresql+psycopg://user@localhost:notaport/db",
    ],
)
def test_malformed_url_raises_store_unavailable_with_hint(url: str) -> None:
    with pytest.raises(nyxnb.StoreUnavailable) as err:
        open_store(url)
    assert "malformed" in err.value.message or "cannot reach" in err.value.message
    assert "sqlite:///" in err.value.hint or "--db" in err.value.hint


def test_unreachable_server_raises_store_unavailable_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(nyxnb.StoreUnavailable) as err:
        open_store("postgresql+psycopg://nyx:s3cret@127.0.0.1:1/nyx")
    assert time.monotonic() - started < 10
    assert "cannot reach" in err.value.message and "127.0.0.1" in err.value.message
    assert "s3cret" not in str(err.value)
    assert "server is running" in err.value.hint
    assert "\n" not in str(err.value)


def test_sqlite_file_in_a_missing_folder_raises_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(nyxnb.StoreUnavailable) as err:
        open_store(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
    assert err.value.hint


def test_ids_are_uuid7_and_only_increase_within_a_process() -> None:
    """A call's attempt rows share one ``created_at``: their ids keep the order they were made
    in (a PostgreSQL digest once read a fallback backwards, ``openai -> anthropic``)."""
    import uuid

    from nyxnb.store.models import new_id

    ids = [new_id() for _ in range(20_000)]  # many share a millisecond, some its fraction
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[-1])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
