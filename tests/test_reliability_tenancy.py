"""Tenancy under faults: no move of a running project, a per-tenant cache, checked writes,
and a database error during a move as one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from nyxnb.cli.main import cli
from nyxnb.engine import lease
from nyxnb.errors import MigrationError
from nyxnb.store import models as m
from nyxnb.tenants.migrate import apply_migration, plan_migration, table_checksums
from tests.test_migrate import build_world


def test_a_project_with_a_running_workflow_is_not_moved(store):
    world = build_world(store)
    running = world.workflows[0]
    lease.acquire(store, running, lease.new_owner())  # what a live run holds
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    before = table_checksums(store)
    with pytest.raises(MigrationError, match="is running"):
        apply_migration(store, plan, "rename")
    assert table_checksums(store) == before  # nothing moved, nothing left behind
    with store.session() as s:  # expired but never released: maybe only stopped, still refused
        s.get_one(m.Workflow, running).lease_expires_at = m.utcnow()
    with pytest.raises(MigrationError, match="is running"):
        apply_migration(store, plan_migration(store, "BRbase", "nyx", "clarait"), "rename")
    with store.session() as s:  # the run ended and released its lease
        s.get_one(m.Workflow, running).lease_owner = None
    move = apply_migration(store, plan_migration(store, "BRbase", "nyx", "clarait"), "rename")
    assert move.counts


@pytest.mark.postgres
def test_plpgsql_exception_during_a_move_is_one_line(pg_url):
    from nyxnb.store import open_store

    store = open_store(pg_url)
    build_world(store)
    with store.engine.begin() as conn:
        conn.execute(text("""
            CREATE FUNCTION no_moves() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'project moves are frozen today'; END $$;
            CREATE TRIGGER frozen_moves BEFORE UPDATE ON projects
            FOR EACH ROW EXECUTE FUNCTION no_moves();
        """))  # fmt: skip
    before = table_checksums(store)
    out = CliRunner().invoke(
        cli,
        [
            "--db",
            pg_url,
            "migrate",
            "BRbase",
            "--from",
            "nyx",
            "--to",
            "clarait",
            "--apply",
            "--on-conflict",
            "rename",
        ],  # fmt: skip
    )
    assert out.exit_code == 1, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and "project moves are frozen today" in lines[0], out.output
    assert "nothing was changed" in lines[0]
    assert table_checksums(store) == before
    store.dispose()
