"""Tenant migration: plan, apply, verify, reverse -- on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import Column, ForeignKey, MetaData, String, Table, event, func, select, text

from nyxnb.cli.migrate import clone, migrate
from nyxnb.errors import (
    ConfigError,
    MigrationConflict,
    MigrationError,
    NotFound,
    StalePlan,
    VerificationFailed,
)
from nyxnb.store import Store
from nyxnb.store import models as m
from nyxnb.tenants.migrate import (
    MigrationPlan,
    apply_migration,
    plan_migration,
    reverse_migration,
    table_checksums,
)

TENANT_TABLES = [
    "projects",
    "repositories",
    "code_patterns",
    "workflows",
    "workflow_steps",
    "step_items",
    "llm_calls",
    "provider_batches",
    "project_notes",
    "project_syncs",
    "consolidations",
    "workflow_insights",
]
EXPECTED = {
    "projects": 1,
    "repositories": 1,
    "code_patterns": 3,
    "workflows": 2,
    "workflow_steps": 6,
    "step_items": 4,
    "llm_calls": 4,
    "provider_batches": 0,
    "project_notes": 2,
    "project_syncs": 1,
    "consolidations": 1,
    "workflow_insights": 5,
}


def _workflow(s: Any, tenant: str, project: str, name: str) -> m.Workflow:
    wf = m.Workflow(tenant_id=tenant, project_id=project, name=name, spec={"name": name})
    s.add(wf)
    s.flush()
    steps = [
        m.WorkflowStep(tenant_id=tenant, workflow_id=wf.id, order=i, name=f"s{i}", type=kind,
                       status="completed", output=f"out {i}", auto_generated=i == 2)
        for i, kind in enumerate(["llm", "fan-out", "consistency-check"])
    ]  # fmt: skip
    s.add_all(steps)
    s.flush()
    for idx in range(2):
        s.add(m.StepItem(tenant_id=tenant, step_id=steps[1].id, idx=idx, heading=f"h{idx}",
                         output=f"item {idx}", status="completed"))  # fmt: skip
        s.add(m.LlmCall(tenant_id=tenant, workflow_id=wf.id, step_id=steps[1].id, item_idx=idx,
                        provider="offline", outcome="ok", cost_usd=0.25 * idx))  # fmt: skip
    return wf


def build_world(store: Store) -> SimpleNamespace:
    """nyx/BRbase with history, clarait's empty duplicates, and bystanders in both tenants."""
    w = SimpleNamespace()
    with store.session() as s:
        nyx, clarait = m.Tenant(slug="nyx", name="Nyx"), m.Tenant(slug="clarait", name="ClarAIt")
        s.add_all([nyx, clarait])
        s.flush()
        w.nyx, w.clarait = nyx.id, clarait.id
        p = m.Project(tenant_id=nyx.id, name="BRbase")
        other = m.Project(tenant_id=nyx.id, name="Other")
        dup = m.Project(tenant_id=clarait.id, name="BRbase")
        mine = m.Project(tenant_id=clarait.id, name="Mine")
        s.add_all([p, other, dup, mine])
        s.flush()
        w.project, w.other, w.dup, w.mine = p.id, other.id, dup.id, mine.id
        repo = m.Repository(tenant_id=nyx.id, project_id=p.id, owner="brbase", repo="BRbase")
        dup_repo = m.Repository(tenant_id=clarait.id, project_id=dup.id, owner="brbase",
                                repo="BRbase")  # fmt: skip
        s.add_all([repo, dup_repo])
        s.flush()
        w.repo, w.dup_repo = repo.id, dup_repo.id
        s.add_all(
            m.CodePattern(tenant_id=nyx.id, repository_id=repo.id, name=f"p{i}", rule="r")
            for i in range(3)
        )
        wfs = [_workflow(s, nyx.id, p.id, f"plan {i}") for i in range(2)]
        w.workflows = [wf.id for wf in wfs]
        w.other_wf = _workflow(s, nyx.id, other.id, "other plan").id
        _workflow(s, clarait.id, mine.id, "mine")
        s.add_all(m.ProjectNote(tenant_id=nyx.id, project_id=p.id, title=f"n{i}") for i in range(2))
        s.add(m.ProjectSync(tenant_id=nyx.id, project_id=p.id, source="github"))
        s.add(m.Consolidation(tenant_id=nyx.id, project_id=p.id, title="q1"))
        s.add_all(
            m.WorkflowInsight(tenant_id=nyx.id, project_id=p.id, content=f"i{i}",
                              workflow_id=wfs[i % 2].id if i < 4 else None)
            for i in range(5)
        )  # fmt: skip
        s.add(m.ProjectNote(tenant_id=nyx.id, project_id=other.id, title="stays"))
    return w


@pytest.fixture
def world(store: Store) -> SimpleNamespace:
    return build_world(store)


def checksums(store: Store) -> dict[str, str]:
    """Every table's full checksum, the audit table left out."""
    return {k: v for k, v in table_checksums(store).items() if k != "tenant_moves"}


def tenant_counts(store: Store, tenant_id: str) -> dict[str, int]:
    with store.engine.connect() as conn:
        out = {}
        for name in TENANT_TABLES:
            t = m.Base.metadata.tables[name]
            out[name] = conn.scalar(select(func.count()).where(t.c.tenant_id == tenant_id))
        conn.rollback()
    return out


def test_plan_counts_conflicts_and_formats(store, world):
    before = table_checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    assert plan_migration(store, world.project, world.nyx, world.clarait) == plan
    assert table_checksums(store) == before  # a dry run writes nothing
    assert plan.counts == EXPECTED
    assert [t.table for t in plan.tables][0] == "projects"
    assert {(c.table, c.removable) for c in plan.conflicts} == {
        ("projects", True),
        ("repositories", True),
    }
    assert {c.target_id for c in plan.conflicts} == {world.dup, world.dup_repo}
    assert plan.references == ()
    shown = str(plan)
    assert "workflow_insights" in shown and "empty, remove it" in shown
    df = plan.to_dataframe()
    assert list(df["table"]) == [t.table for t in plan.tables]
    assert int(df["rows"].sum()) == plan.total_rows == sum(EXPECTED.values())
    again = MigrationPlan.from_json(plan.to_json())
    assert again == plan and again.to_dict() == plan.to_dict()
    assert [r.action for r in plan.resolve()] == ["remove", "remove"]


def test_apply_moves_everything_and_reverse_restores(store, world):
    before = checksums(store)
    nyx_before = tenant_counts(store, world.nyx)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    move = apply_migration(store, plan)
    assert dict(move.counts) == EXPECTED
    with store.session() as s:
        assert s.get(m.Project, world.dup) is None and s.get(m.Repository, world.dup_repo) is None
        assert s.get_one(m.Project, world.project).tenant_id == world.clarait
        audit = s.get_one(m.TenantMove, move.move_id)
        assert audit.counts["moved"] == EXPECTED and audit.applied_at is not None
        assert audit.plan["plan"]["project"] == "BRbase" and len(audit.plan["removed"]) == 2
        assert s.get_one(m.Workflow, world.other_wf).tenant_id == world.nyx
    left = tenant_counts(store, world.nyx)
    assert all(left[t] == nyx_before[t] - EXPECTED[t] for t in TENANT_TABLES)
    with pytest.raises(StalePlan, match="'BRbase' is no longer in tenant nyx"):
        apply_migration(store, plan)  # the same plan twice
    assert reverse_migration(store, move.move_id).action == "reverse"
    assert checksums(store) == before
    with store.session() as s:
        assert s.get_one(m.TenantMove, move.move_id).reversed_at is not None
    with pytest.raises(MigrationError, match="already reversed"):
        reverse_migration(store, move.move_id)


def test_a_table_added_later_is_found_from_the_schema(store, world):
    extra = Table(
        "project_labels",
        MetaData(),
        Column("id", String(36), primary_key=True),
        Column("tenant_id", String(36), ForeignKey(m.Tenant.__table__.c.id), nullable=False),
        Column("project_id", String(36), ForeignKey(m.Project.__table__.c.id), nullable=False),
        Column("label", String(50)),
    )
    extra.create(store.engine)
    with store.engine.begin() as conn:
        rows = [{"id": f"l{i}", "tenant_id": world.nyx, "project_id": world.project,
                 "label": f"x{i}"} for i in range(3)]  # fmt: skip
        conn.execute(extra.insert(), rows)
    before = checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    assert plan.counts["project_labels"] == 3
    move = apply_migration(store, plan)
    with store.engine.connect() as conn:
        tenants = set(conn.scalars(select(extra.c.tenant_id)))
    assert tenants == {world.clarait}
    reverse_migration(store, move.move_id)
    assert checksums(store) == before


def _fill_duplicate(store: Store, world: SimpleNamespace, *, pattern: bool = False) -> None:
    with store.session() as s:
        s.add(m.ProjectNote(tenant_id=world.clarait, project_id=world.dup, title="theirs"))
        if pattern:
            s.add(m.CodePattern(tenant_id=world.clarait, repository_id=world.dup_repo,
                                name="theirs", rule="r"))  # fmt: skip


def test_non_empty_conflict_refuses_without_policy(store, world):
    _fill_duplicate(store, world)
    before = table_checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    project = next(c for c in plan.conflicts if c.table == "projects")
    assert not project.removable and project.dependents == 2  # the note and the empty repo
    with pytest.raises(MigrationConflict, match=f"projects name='BRbase'.*{world.dup}"):
        apply_migration(store, plan)
    assert "needs a policy" in str(plan)
    assert table_checksums(store) == before


def test_rename_policy_and_reverse(store, world):
    _fill_duplicate(store, world)
    before = checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    move = apply_migration(store, plan, on_conflict="rename")
    with store.session() as s:
        names = set(s.scalars(select(m.Project.name).where(m.Project.tenant_id == world.clarait)))
        assert names == {"BRbase", "BRbase-nyx", "Mine"}
        assert s.get(m.Repository, world.dup_repo) is None  # still empty: removed
    reverse_migration(store, move.move_id)
    assert checksums(store) == before


def test_merge_policy_and_reverse(store, world):
    _fill_duplicate(store, world, pattern=True)
    before = checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    actions = {(r.table, r.action) for r in plan.resolve("merge")}
    assert actions == {("projects", "merge"), ("repositories", "merge")}
    move = apply_migration(store, plan, on_conflict="merge")
    with store.session() as s:
        assert s.get(m.Project, world.project) is None
        wfs = s.scalars(select(m.Workflow.id).where(m.Workflow.project_id == world.dup)).all()
        assert set(wfs) == set(world.workflows)
        patterns = s.scalar(
            select(func.count()).where(m.CodePattern.repository_id == world.dup_repo)
        )
        assert patterns == 4
    reverse_migration(store, move.move_id)
    assert checksums(store) == before


def test_stale_plan_is_refused(store, world):
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    with store.session() as s:
        s.add(m.ProjectNote(tenant_id=world.nyx, project_id=world.project, title="late"))
    before = table_checksums(store)
    with pytest.raises(StalePlan, match="project_notes has 3 rows to move, the plan says 2"):
        apply_migration(store, plan)
    assert table_checksums(store) == before
    fresh = plan_migration(store, "BRbase", "nyx", "clarait")
    assert plan.diff(fresh) == ["project_notes has 3 rows to move, the plan says 2"]


@contextmanager
def failing_on(store: Store, prefix: str) -> Iterator[None]:
    def boom(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith(prefix):
            raise RuntimeError("injected failure")

    event.listen(store.engine, "before_cursor_execute", boom)
    try:
        yield
    finally:
        event.remove(store.engine, "before_cursor_execute", boom)


@pytest.mark.parametrize("prefix", ["UPDATE workflow_insights", "INSERT INTO tenant_moves"])
def test_failure_mid_apply_leaves_the_database_as_before(store, world, prefix):
    before = table_checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    with failing_on(store, prefix), pytest.raises(RuntimeError, match="injected"):
        apply_migration(store, plan)
    assert table_checksums(store) == before
    apply_migration(store, plan)  # the same plan still applies afterwards


def test_verification_failure_rolls_back(store, world):
    if store.dialect == "sqlite":
        ddl = [
            "CREATE TRIGGER tamper AFTER UPDATE OF tenant_id ON project_notes BEGIN "
            "UPDATE project_notes SET body = body || '!' WHERE id = NEW.id; END"
        ]
    else:
        ddl = [
            "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.body := NEW.body || '!'; RETURN NEW; END $$",
            "CREATE TRIGGER tamper BEFORE UPDATE OF tenant_id ON project_notes "
            "FOR EACH ROW EXECUTE FUNCTION tamper()",
        ]
    with store.engine.begin() as conn:
        for statement in ddl:
            conn.execute(text(statement))
    before = table_checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    with pytest.raises(VerificationFailed, match="project_notes: the checksum"):
        apply_migration(store, plan)
    assert table_checksums(store) == before


def test_cross_project_references_are_detached_and_restored(store, world):
    with store.session() as s:
        s.get_one(m.Workflow, world.other_wf).cloned_from_id = world.workflows[0]  # points in
        insight = m.WorkflowInsight(tenant_id=world.nyx, project_id=world.project,
                                    workflow_id=world.other_wf, content="points out")  # fmt: skip
        s.add(insight)
        s.flush()
        insight_id = insight.id
    before = checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    found = {(r.table, r.column, r.row_id, r.moved) for r in plan.references}
    assert found == {
        ("workflows", "cloned_from_id", world.other_wf, False),
        ("workflow_insights", "workflow_id", insight_id, True),
    }
    assert "Foreign keys to detach (set NULL): 2" in str(plan)
    move = apply_migration(store, plan)
    with store.session() as s:
        assert s.get_one(m.Workflow, world.other_wf).cloned_from_id is None
        moved = s.get_one(m.WorkflowInsight, insight_id)
        assert (moved.workflow_id, moved.tenant_id) == (None, world.clarait)
    reverse_migration(store, move.move_id)
    assert checksums(store) == before


def test_reverse_refuses_when_the_project_changed(store, world):
    move = apply_migration(store, plan_migration(store, "BRbase", "nyx", "clarait"))
    with store.session() as s:
        s.add(m.WorkflowInsight(tenant_id=world.clarait, project_id=world.project,
                                workflow_id=world.workflows[0], content="new"))  # fmt: skip
    before = table_checksums(store)
    with pytest.raises(StalePlan, match="new workflow_insights rows reference moved"):
        reverse_migration(store, move.move_id)
    assert table_checksums(store) == before


def test_bad_requests(store, world):
    with pytest.raises(NotFound, match="tenant 'nobody'"):
        plan_migration(store, "BRbase", "nyx", "nobody")
    with pytest.raises(NotFound, match="project 'Nope'"):
        plan_migration(store, "Nope", "nyx", "clarait")
    with pytest.raises(NotFound, match="project 'Mine'"):
        plan_migration(store, "Mine", "nyx", "clarait")
    with pytest.raises(ConfigError, match="both 'nyx'"):
        plan_migration(store, "BRbase", "nyx", world.nyx)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    with pytest.raises(ConfigError, match="unknown conflict policy"):
        apply_migration(store, plan, on_conflict="yolo")
    with pytest.raises(NotFound, match="tenant move"):
        reverse_migration(store, "no-such-move")


def test_original_case_brbase_from_nyx_to_clarait(store):
    from nyxnb.store.seed import seed

    seed(store)
    before = checksums(store)
    plan = plan_migration(store, "BRbase", "nyx", "clarait")
    counts = plan.counts
    assert counts["projects"] == 1 and counts["repositories"] == 1
    assert counts["code_patterns"] == 234 and counts["workflows"] == 15
    assert (counts["project_notes"], counts["project_syncs"], counts["consolidations"]) == (8, 5, 3)
    assert counts["workflow_insights"] == 163
    assert sorted((c.table, c.removable) for c in plan.conflicts) == [
        ("projects", True),
        ("repositories", True),
    ]
    clarait = store.find_tenant("clarait").id
    move = apply_migration(store, plan)
    assert dict(move.counts) == counts
    moved = tenant_counts(store, clarait)
    assert all(moved[t] == counts[t] for t in TENANT_TABLES)
    assert tenant_counts(store, store.find_tenant("nyx").id) == dict.fromkeys(TENANT_TABLES, 0)
    reverse_migration(store, move.move_id)
    assert checksums(store) == before


# --- CLI: a thin layer over the API tested on both backends above, so SQLite is enough ----


def run_cli(store: Store, *args: str) -> Any:
    @click.group()
    def cli() -> None:
        pass

    cli.add_command(clone)
    cli.add_command(migrate)
    url = store.url.render_as_string(hide_password=False)
    return CliRunner().invoke(cli, list(args), obj={"db": url, "json": False})


@pytest.fixture
def cli_world(sqlite_store: Store) -> SimpleNamespace:
    world = build_world(sqlite_store)
    world.store = sqlite_store
    return world


def test_cli_dry_run_apply_and_reverse(cli_world, tmp_path):
    store = cli_world.store
    before = table_checksums(store)
    dry = run_cli(store, "migrate", "BRbase", "--from", "nyx", "--to", "clarait")
    assert dry.exit_code == 0, dry.output
    assert "workflow_insights" in dry.output and "remove empty projects row" in dry.output
    assert "dry run" in dry.output and table_checksums(store) == before
    as_json = run_cli(store, "migrate", "BRbase", "--from", "nyx", "--to", "clarait", "--json")
    body = json.loads(as_json.output)
    assert body["plan"]["project"] == "BRbase" and len(body["resolutions"]) == 2
    saved = tmp_path / "plan.json"
    saved.write_text(as_json.output)
    done = run_cli(store, "migrate", "--plan", str(saved), "--apply", "--json")
    assert done.exit_code == 0, done.output
    move_id = json.loads(done.output)["move_id"]
    back = run_cli(store, "migrate", "--reverse", move_id)
    assert back.exit_code == 0 and "reversed move" in back.output
    assert checksums(store) == {k: v for k, v in before.items() if k != "tenant_moves"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["BRbase", "--from", "nyx", "--to", "nobody"], "tenant 'nobody' not found"),
        (["Nope", "--from", "nyx", "--to", "clarait"], "project 'Nope' not found"),
        (["BRbase", "--from", "nyx", "--to", "nyx"], "source and target tenant are both"),
        (["BRbase", "--from", "nyx"], "missing --to"),
        (["--reverse", "nope"], "tenant move 'nope' not found"),
        (["--plan", "/no/such/plan.json"], "cannot read plan"),
    ],
)
def test_cli_errors_are_one_line(cli_world, args, message):
    before = table_checksums(cli_world.store)
    result = run_cli(cli_world.store, "migrate", *args, "--apply")
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert table_checksums(cli_world.store) == before


def test_cli_stale_plan_and_conflict(cli_world, tmp_path):
    store = cli_world.store
    saved = tmp_path / "plan.json"
    saved.write_text(plan_migration(store, "BRbase", "nyx", "clarait").to_json())
    _fill_duplicate(store, cli_world)
    before = table_checksums(store)
    stale = run_cli(store, "migrate", "--plan", str(saved), "--apply")
    assert stale.exit_code == 1 and "changed since the plan" in stale.output
    assert len(stale.output.strip().splitlines()) == 1
    refused = run_cli(store, "migrate", "BRbase", "--from", "nyx", "--to", "clarait", "--apply")
    assert refused.exit_code == 1 and "--on-conflict" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    dry = run_cli(store, "migrate", "BRbase", "--from", "nyx", "--to", "clarait")
    assert dry.exit_code == 0 and "Refused under --on-conflict abort" in dry.output
    assert table_checksums(store) == before
    renamed = run_cli(store, "migrate", "BRbase", "--from", "nyx", "--to", "clarait", "--apply",
                      "--on-conflict", "rename", "--suffix", "-old")  # fmt: skip
    assert renamed.exit_code == 0, renamed.output
    assert "name='BRbase-old'" in renamed.output
