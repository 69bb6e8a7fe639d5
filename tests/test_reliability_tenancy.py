"""Tenancy under faults: no move of a running project, a per-tenant cache, checked writes,
and a database error during a move as one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from nyxnb.cli.main import cli
from nyxnb.engine.durable import lease
from nyxnb.errors import MigrationError
from nyxnb.store import models as m
from nyxnb.store.holders import new_owner
from nyxnb.tenants.migrate import apply_migration, plan_migration, table_checksums
from tests.test_migrate import build_world


def test_a_project_with_a_running_workflow_is_not_moved(store):
    world = build_world(store)
    running = world.workflows[0]
    lease.acquire(store, running, new_owner())  # what a live run holds
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    before = table_checksums(store)
    with pytest.raises(MigrationError, match="is running"):
        apply_migration(store, plan, "rename")
    assert table_checksums(store) == before  # nothing moved, nothing left behind
    with store.session() as s:  # expired, never released (a killed run): moved, lease ended
        s.get_one(m.Workflow, running).lease_expires_at = m.utcnow()
    move = apply_migration(store, plan_migration(store, "BRbase", "nyx", "clarait"), "rename")
    with store.session() as s:
        assert s.get_one(m.Workflow, running).lease_owner is None  # a woken holder is fenced
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


def _two_tenants(store):
    from tests.helpers import minimal

    minimal(store)
    with store.session() as s:
        other = m.Tenant(slug="other", name="Other")
        s.add(other)
        s.flush()
        s.add(m.Project(tenant_id=other.id, name="BRbase", description="A bug tracker."))
    return store


@pytest.mark.parametrize("share", [False, True])
def test_response_cache_is_scoped_by_tenant_unless_shared(sqlite_store, share):
    import nyxnb
    from tests.helpers import three_steps

    _two_tenants(sqlite_store)
    spec = three_steps("cached", 3, cache=True, share_cache=share)
    first = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    again = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store)
    other = nyxnb.run(spec, tenant="other", project="BRbase", store=sqlite_store)
    assert first.ok and again.ok and other.ok
    with sqlite_store.session() as s:

        def cached(wf: str) -> list[bool]:
            rows = s.scalars(select(m.LlmCall.cached).where(m.LlmCall.workflow_id == wf))
            return list(rows)

        assert all(cached(again.workflow_id)) and cached(again.workflow_id)  # same tenant
        assert all(cached(other.workflow_id)) is share  # another tenant: only if shared
        assert any(cached(other.workflow_id)) is share
        every = s.scalar(select(func.count()).select_from(m.LlmCache))
    # the cache's rows are the tenants': a tenant session counts its own answers only
    with sqlite_store.tenant("nyx", read_only=True) as s:
        nyx = s.scalar(select(func.count()).select_from(m.LlmCache))
    with sqlite_store.tenant("other", read_only=True) as s:
        others = s.scalar(select(func.count()).select_from(m.LlmCache))
        assert s.scalar(select(func.count()).select_from(m.LlmCache.__table__)) == others
    assert nyx and nyx + others == every
    assert others == (0 if share else nyx)  # shared: the other tenant wrote no answer of its own


def test_tenant_session_checks_writes_and_scopes_core_selects(store):
    from nyxnb.errors import NotFound
    from nyxnb.store.tenancy import NyxSession  # noqa: F401 - the session under test

    world = build_world(store)
    workflows = m.Workflow.__table__
    with store.tenant("clarait") as s:  # Core select(table): only this tenant's rows
        rows = s.execute(select(workflows)).all()
        assert rows and {r.tenant_id for r in rows} == {world.clarait}
        joined = s.execute(
            select(workflows.c.id).join(
                m.Project.__table__, m.Project.__table__.c.id == workflows.c.project_id
            )
        ).all()
        assert len(joined) == len(rows)
    with pytest.raises(NotFound), store.tenant("clarait") as s:  # set another tenant's id
        s.get_one(m.Project, world.mine).tenant_id = world.nyx
    with pytest.raises(NotFound), store.tenant("clarait") as s:  # attach to nyx's project
        s.add(m.ProjectNote(project_id=world.project, title="sneaky"))
    with pytest.raises(NotFound), store.tenant("clarait") as s:  # move a row over by update
        from sqlalchemy import update

        s.execute(update(m.Project).where(m.Project.id == world.mine).values(tenant_id=world.nyx))
    with store.session() as s:  # nothing of that reached the store
        assert s.get_one(m.Project, world.mine).tenant_id == world.clarait
        notes = s.scalars(select(m.ProjectNote.title)).all()
        assert "sneaky" not in notes
