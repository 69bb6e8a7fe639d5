"""The sample data: exact counts, idempotency, determinism, valid rules, personas, duplicates."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import func, select

import nyxnb
from nyxnb.store import Store, open_store
from nyxnb.store import models as m
from nyxnb.store import seed as seed_mod
from nyxnb.store.seed import SeedReport, data_dir, load_personas, load_spec, load_spec_path, seed
from nyxnb.store.tenancy import NyxSession

SEEDED = [f.name for f in dataclasses.fields(SeedReport) if f.name != "created"]
TABLES = {name: m.Base.metadata.tables[name] for name in SEEDED}
NYX_COUNTS = {
    "projects": 1,
    "repositories": 1,
    "code_patterns": 234,
    "workflows": 15,
    "project_notes": 8,
    "project_syncs": 5,
    "consolidations": 3,
    "workflow_insights": 163,
}
PERSONAS = {
    "NyxCore",
    "Athena",
    "Cael",
    "Harmonia",
    "Nemesis",
    "Aristaeus",
    "Ipcha Mistabra",
    "Morgan",
    "Aletheia",
}


def table_counts(store: Store, tenant_id: str | None = None) -> dict[str, int]:
    """Rows per seeded table (of one tenant when ``tenant_id`` is given)."""
    out = {}
    with store.session() as s:
        for name, table in TABLES.items():
            query = select(func.count()).select_from(table)
            if tenant_id is not None and "tenant_id" in table.c:
                query = query.where(table.c.tenant_id == tenant_id)
            elif tenant_id is not None:
                continue
            out[name] = s.scalar(query)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        value = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def content_checksum(store: Store) -> str:
    """sha256 of every seeded row, ids replaced by natural labels, timestamps of insert ignored."""
    with store.session() as s:
        rows = {
            name: [dict(r._mapping) for r in s.execute(select(t))] for name, t in TABLES.items()
        }
    labels: dict[str, str] = {}
    for name, field in [("tenants", "slug"), ("projects", "name"), ("workflows", "name")]:
        labels |= {r["id"]: f"{name}:{r[field]}" for r in rows[name]}
    labels |= {r["id"]: f"{r['owner']}/{r['repo']}" for r in rows["repositories"]}
    labels |= {r["id"]: f"{labels[r['workflow_id']]}#{r['order']}" for r in rows["workflow_steps"]}
    digest = hashlib.sha256()
    for name in SEEDED:
        lines = []
        for row in rows[name]:
            clean = {
                k: (labels.get(v, "?") if k.endswith("_id") and v else _plain(v))
                for k, v in row.items()
                if k not in ("id", "created_at", "updated_at")
            }
            lines.append(json.dumps(clean, sort_keys=True, default=str))
        digest.update(f"{name}\n{chr(10).join(sorted(lines))}\n".encode())
    return digest.hexdigest()


@pytest.fixture
def seeded(store: Store) -> tuple[Store, SeedReport]:
    """A store on each backend with the sample data seeded once."""
    return store, seed(store)


def tenant_id(store: Store, slug: str) -> str:
    return store.find_tenant(slug).id


def test_exact_counts_per_tenant(seeded):
    store, report = seeded
    assert report.created and report.tenants == 2 and report.personas == 9
    nyx = table_counts(store, tenant_id(store, "nyx"))
    assert {k: nyx[k] for k in NYX_COUNTS} == NYX_COUNTS
    assert nyx["workflow_steps"] == report.workflow_steps > 15 * 5
    assert nyx["step_items"] == report.step_items > 0
    clarait = table_counts(store, tenant_id(store, "clarait"))
    assert clarait == {k: (1 if k in ("projects", "repositories") else 0) for k in clarait}
    assert table_counts(store) == report.counts()
    assert {t.slug: t.name for t in _all(store, m.Tenant)} == {
        "nyx": "Nyx Labs",
        "clarait": "ClarAIt",
    }


def _all(store: Store, model: Any) -> list[Any]:
    with store.session() as s:
        return list(s.scalars(select(model)))


def test_second_run_creates_nothing(seeded):
    store, first = seeded
    before = table_counts(store)
    again = seed(store)
    assert not again.created and again.total == 0
    assert again == SeedReport()
    assert table_counts(store) == before
    assert first.total == sum(before.values())


def test_same_seed_same_content(seeded, tmp_path):
    store, _ = seeded
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        seed(other)
        assert content_checksum(store) == content_checksum(other)
    finally:
        other.dispose()


def test_failure_leaves_nothing_written(store, monkeypatch):
    real_write = seed_mod._Batch.write

    def write_then_fail(self, s):
        real_write(self, s)
        raise RuntimeError("boom after every insert")

    monkeypatch.setattr(seed_mod._Batch, "write", write_then_fail)
    with pytest.raises(RuntimeError):
        seed(store)
    assert set(table_counts(store).values()) == {0}


def test_bulk_seed_writes_each_table_in_one_executemany(sqlite_store, monkeypatch):
    """Seeding is bulk: one executemany per table and no statement per row (not timed: speed
    is for benchmarks; a per-row INSERT or SELECT shows up here as statements >= rows)."""
    from sqlalchemy import event

    statements: list[str] = []

    def count(_conn, _cursor, statement, _params, _context, _many):  # noqa: ANN001
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(sqlite_store.engine, "before_cursor_execute", count)
    executes: list[str] = []
    real_execute = NyxSession.execute

    def execute(self, statement, params=None, **kw):  # noqa: ANN001, ANN202
        if self.info.get("seeding"):
            executes.append(statement.table.name)
        return real_execute(self, statement, params, **kw)

    real_write = seed_mod._Batch.write

    def write(self, s):  # noqa: ANN001, ANN202
        s.info["seeding"] = True
        try:
            real_write(self, s)
        finally:
            s.info["seeding"] = False

    monkeypatch.setattr(NyxSession, "execute", execute)
    monkeypatch.setattr(seed_mod._Batch, "write", write)
    report = seed(sqlite_store)
    event.remove(sqlite_store.engine, "before_cursor_execute", count)
    counts = {k: v for k, v in dataclasses.asdict(report).items() if k != "created"}
    rows = sum(counts.values())
    assert rows > 600
    assert sorted(executes) == sorted(t for t, n in counts.items() if n)  # one call per table
    assert len(statements) * 5 < rows, (len(statements), rows)  # far from one per row
    assert statements.count("SELECT") < 30  # lookups per tenant/persona/project, not per row


def test_code_patterns_are_checkable_rules(seeded):
    store, _ = seeded
    patterns = _all(store, m.CodePattern)
    assert len(patterns) == 234
    assert len({p.name for p in patterns}) == 234
    for p in patterns:
        re.compile(p.pattern)
        assert p.kind in ("must", "must_not") and p.rule and p.category and p.applies_to
        assert "{feature}" not in p.rule + p.pattern + p.applies_to
    standards = {p.name.split("/")[0] for p in patterns}
    for required in ("no-deep-relative-imports", "no-next-auth", "clerk-server-auth"):
        assert required in standards
    for required in ("jest-describe-it", "no-mocha-vitest", "trpc-create-router"):
        assert required in standards
    assert len(standards) >= 40


def test_every_standard_detects_its_example():
    doc = yaml.safe_load((data_dir() / "code_patterns.yaml").read_text(encoding="utf-8"))
    for std in doc["standards"]:
        for feature in doc["features"]:
            sub = {k: str(v).replace("{feature}", feature) for k, v in std.items()}
            rx = re.compile(sub["pattern"])
            assert rx.search(sub["match"]), (std["name"], feature, "misses its match example")
            assert not rx.search(sub["clean"]), (std["name"], feature, "flags its clean example")


def test_pattern_feature_folders_are_the_sample_areas():
    doc = yaml.safe_load((data_dir() / "code_patterns.yaml").read_text(encoding="utf-8"))
    areas = seed_mod.load_sample()["vocab"]["areas"]
    assert doc["features"] == [seed_mod._slug(a) for a in areas]
    assert len(areas) == len(load_spec()["steps"][1]["items"])


def test_patterns_detect_the_original_standards():
    rows = {r["name"].split("/")[0]: r for r in seed_mod.expand_code_patterns(234, 1)}
    bad = 'import { db } from "../../server/db";\nimport NextAuth from "next-auth";\n'
    assert re.search(rows["no-deep-relative-imports"]["pattern"], bad)
    assert re.search(rows["no-next-auth"]["pattern"], bad)
    assert re.search(rows["no-mocha-vitest"]["pattern"], 'import { it } from "vitest";')
    assert not re.search(rows["no-console-log"]["pattern"], 'logger.info("ok", {});')


def test_completed_steps_and_items_have_output(seeded):
    store, _ = seeded
    with store.session() as s:
        steps = list(s.scalars(select(m.WorkflowStep)))
        items = list(s.scalars(select(m.StepItem)))
        specs = {w.id: w.spec for w in s.scalars(select(m.Workflow))}
    assert all(st.output for st in steps if st.status == m.COMPLETED)
    assert all(it.output for it in items if it.status == m.COMPLETED)
    per_step: dict[str, int] = {}
    for it in items:
        per_step[it.step_id] = per_step.get(it.step_id, 0) + 1
    for st in steps:
        if st.type == "fan-out" and st.status == m.COMPLETED:
            spec_step = next(x for x in specs[st.workflow_id]["steps"] if x["name"] == st.name)
            assert per_step[st.id] == len(spec_step["items"])


def _steps_by_workflow(store: Store) -> dict[str, tuple[m.Workflow, list[m.WorkflowStep]]]:
    with store.session() as s:
        flows = {w.id: (w, []) for w in s.scalars(select(m.Workflow))}
        for st in s.scalars(select(m.WorkflowStep).order_by(m.WorkflowStep.order)):
            flows[st.workflow_id][1].append(st)
    return flows


def test_workflows_reproduce_the_original_situation(seeded):
    store, _ = seeded
    flows = _steps_by_workflow(store).values()
    statuses = [w.status for w, _ in flows]
    assert statuses.count(m.COMPLETED) == 10
    assert {m.FAILED, m.PAUSED, m.PENDING} <= set(statuses)
    with_generated = [w for w, steps in flows if any(st.auto_generated for st in steps)]
    assert sum(w.status == m.COMPLETED for w in with_generated) == 5
    for _, steps in flows:
        assert [st.order for st in steps] == list(range(len(steps)))
        flags = [st.auto_generated for st in steps]
        assert flags == sorted(flags), "generated steps come after the user's steps"
        kinds = {st.type for st in steps if st.auto_generated}
        assert kinds <= {"consistency-check", "implementation-prompt"}
        names = [st.name for st in steps if st.auto_generated]
        assert all(n == "consistency_check" or re.fullmatch(r"implement_\d\d", n) for n in names)
    trap = [
        steps
        for w, steps in flows
        if any(st.status != m.COMPLETED and not st.auto_generated for st in steps)
        and any(st.status == m.COMPLETED and st.auto_generated for st in steps)
    ]
    assert len(trap) == 1, "one workflow: a pending synthesis before completed generated steps"
    assert next(st for st in trap[0] if st.name == "synthesis").status == m.PENDING


def test_insights_link_to_the_project_workflows(seeded):
    store, _ = seeded
    flows = {w.id for w in _all(store, m.Workflow)}
    insights = _all(store, m.WorkflowInsight)
    assert len(insights) == 163
    assert {i.workflow_id for i in insights} == flows


def test_personas_are_the_nine_globals(seeded):
    store, _ = seeded
    personas = _all(store, m.Persona)
    assert {p.name for p in personas} == PERSONAS and len(personas) == 9
    for p in personas:
        assert p.tenant_id is None and p.role
        assert 8 <= len(p.system_prompt.strip().splitlines()) <= 15, p.name
        assert len(p.system_prompt) > 500, p.name
    assert {p["name"] for p in load_personas()} == PERSONAS


def test_clarait_duplicates_are_empty(seeded):
    store, _ = seeded
    with store.tenant("clarait") as s:
        project = s.scalars(select(m.Project)).one()
        repo = s.scalars(select(m.Repository)).one()
        assert (project.name, repo.owner, repo.repo) == ("BRbase", "brbase", "BRbase")
        assert repo.project_id == project.id
        for model in (m.CodePattern, m.Workflow, m.ProjectNote, m.WorkflowInsight):
            assert s.scalar(select(func.count()).select_from(model)) == 0
    with store.tenant("nyx") as s:
        assert s.scalars(select(m.Project)).one().description


def test_spec_file_shape():
    assert load_spec_path() == data_dir() / "workflows" / "brbase-plan.yaml"
    spec = load_spec()
    assert spec["defaults"] == {
        "provider": "anthropic",
        "fallback": ["google", "openai"],
        "model": None,
        "concurrency": 8,
    }
    steps = {st["name"]: st for st in spec["steps"]}
    assert list(steps) == ["analysis", "features", "synthesis", "review", "standards"]
    items = steps["features"]["items"]
    assert len(items) == 13 and len({i["heading"] for i in items}) == 13
    assert all(len(i["body"]) > 80 for i in items)
    assert steps["standards"] == {
        "name": "standards",
        "type": "pattern-check",
        "repository": "brbase/BRbase",
        "target": "synthesis",
    }
    used = {st.get("persona") for st in spec["steps"]} | {
        spec["generate"]["consistency_check"]["persona"],
        spec["generate"]["implementation_prompts"]["persona"],
    }
    assert used - {None} <= PERSONAS


def test_spec_prompts_render():
    spec = load_spec()
    env = SandboxedEnvironment()
    item = SimpleNamespace(heading="Search", body="Find things.", index=0)
    features = SimpleNamespace(output="F", items=[SimpleNamespace(heading="Search", output="X")])
    ctx = {
        "project": SimpleNamespace(name="BRbase", description="D"),
        "item": item,
        "steps": {"analysis": SimpleNamespace(output="A", items=[]), "features": features},
    }
    ctx["steps"]["synthesis"] = SimpleNamespace(output="S", items=[])
    for st in spec["steps"]:
        if st.get("prompt"):
            text = env.from_string(st["prompt"]).render(**ctx)
            assert "BRbase" in text and "{{" not in text
    synthesis = next(st for st in spec["steps"] if st["name"] == "synthesis")
    assert "## Search\nX" in env.from_string(synthesis["prompt"]).render(**ctx)


def test_report_is_frozen_and_data_dir_is_the_checkout():
    report = SeedReport(tenants=1, created=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.tenants = 2  # type: ignore[misc]
    assert report.counts()["tenants"] == 1 and report.total == 1
    assert json.loads(json.dumps(report.to_dict())) == report.counts() | {"created": True}
    assert (data_dir() / "sample.yaml").is_file()
    assert data_dir() == (Path(nyxnb.__file__).parent.parent / "data").resolve()


def test_seeded_history_is_dated_in_order(seeded):
    """The seeded workflows showed finished_at in the sample's year before a created_at of the
    day they were seeded: every row is created before anything else it records happened."""
    store, _ = seeded
    epoch = datetime.fromisoformat(seed_mod.load_sample()["epoch"])
    with store.session() as s:
        for model in (m.Workflow, m.WorkflowStep, m.StepItem, m.ProjectSync, m.Project):
            for row in s.scalars(select(model)):
                times = {
                    c.key: getattr(row, c.key)
                    for c in model.__table__.c
                    if getattr(row, c.key) is not None and isinstance(getattr(row, c.key), datetime)
                }
                created = m.aware(times.pop("created_at"))
                assert created is not None and created >= epoch, (model, row.id)
                assert all(created <= m.aware(t) for t in times.values()), (model, times)
        for wf in s.scalars(select(m.Workflow).where(m.Workflow.finished_at.is_not(None))):
            assert m.aware(wf.created_at) <= m.aware(wf.started_at) <= m.aware(wf.finished_at)
