"""The ``nyxnb`` command: results, ``--json`` everywhere, one-line errors, tenant scope."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

import nyxnb
from nyxnb.cli import cli
from nyxnb.store import open_store
from nyxnb.store.models import Base, LlmCall, StepItem, Workflow, WorkflowStep
from nyxnb.store.schema import HEAD
from nyxnb.store.seed import seed

REPO = Path(nyxnb.__file__).resolve().parent.parent
SPEC = str(REPO / "data" / "workflows" / "brbase-plan.yaml")
UNREACHABLE = "postgresql+psycopg://nyx:s3cret@127.0.0.1:1/nyx"
MALFORMED = "not a url"
TINY_SPEC = """\
name: tiny
defaults: {provider: offline, fallback: [], cache: false}
steps:
  - {name: analysis, persona: Athena, prompt: "Analyse {{ project.name }}"}
"""


# --- helpers -----------------------------------------------------------------------------


def nyx(url: str, *args: str) -> Result:
    """Run the CLI in-process against ``url``."""
    return CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def one_line_error(result: Result, *needles: str) -> str:
    """Exit 1, nothing on stdout, exactly one line on stderr containing every needle."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def events(result: Result) -> list[dict[str, Any]]:
    """One JSON event per line; the first names the workflow; all name the same one."""
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    parsed = [json.loads(line) for line in lines]
    assert parsed[0]["type"] == "workflow_started"
    assert parsed[0]["workflow_id"]
    assert {e["workflow_id"] for e in parsed} == {parsed[0]["workflow_id"]}
    assert all(isinstance(e["type"], str) for e in parsed)
    return parsed


def counts(url: str) -> dict[str, int]:
    store = open_store(url)
    try:
        with store.session() as s:
            return {
                t.name: s.scalar(select(func.count()).select_from(t)) or 0
                for t in Base.metadata.sorted_tables
            }
    finally:
        store.dispose()


def run_offline(url: str, tenant: str = "nyx", project: str = "BRbase", spec: str = SPEC) -> str:
    found = events(ok(nyx(url, "run", spec, "--tenant", tenant, "--project", project,
                          "--provider", "offline", "--json")))  # fmt: skip
    assert found[-1]["type"] == "workflow_completed"
    return str(found[0]["workflow_id"])


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[str]:
    out: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out |= leaf_commands(command, (*prefix, name))
        else:
            out.add(" ".join((*prefix, name)))
    return out


@pytest.fixture(scope="module")
def seeded_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "seeded.db"
    store = open_store(f"sqlite:///{path}")
    seed(store)
    store.dispose()  # checkpoints the WAL into the file
    return path


@pytest.fixture
def db(seeded_file: Path, tmp_path: Path) -> str:
    """A seeded SQLite store of this test's own."""
    for suffix in ("", "-wal", "-shm"):
        src = seeded_file.with_name(seeded_file.name + suffix)
        if src.exists():
            shutil.copy(src, tmp_path / f"nyxnb.db{suffix}")
    return f"sqlite:///{tmp_path / 'nyxnb.db'}"


# --- init, seed, tenants, projects -------------------------------------------------------


def test_init_creates_the_schema(sqlite_url: str) -> None:
    data = as_json(nyx(sqlite_url, "init", "--json"))
    assert data["revision"] == HEAD
    assert data["url"] == sqlite_url
    assert f"schema {HEAD}" in ok(nyx(sqlite_url, "init")).stdout
    assert set(counts(sqlite_url)) == set(Base.metadata.tables)


def test_seed_is_idempotent_and_reports_counts(store_url: str) -> None:
    first = as_json(nyx(store_url, "seed", "--json"))
    assert first["created"] is True
    assert first["tenants"] == 2 and first["personas"] >= 9 and first["workflows"] > 0
    after_first = counts(store_url)
    for table in ("tenants", "projects", "personas", "workflows", "code_patterns"):
        assert after_first[table] == first[table], table
    second = as_json(nyx(store_url, "seed", "--json"))
    assert second["created"] is False
    assert {k: v for k, v in second.items() if k != "created"} == dict.fromkeys(
        (k for k in first if k != "created"), 0
    )
    assert counts(store_url) == after_first
    assert "seeded" in ok(nyx(store_url, "seed")).stdout


def test_tenant_add_and_list(db: str) -> None:
    added = as_json(nyx(db, "tenant", "add", "acme", "--name", "Acme Corp", "--json"))
    assert added["slug"] == "acme" and added["name"] == "Acme Corp" and added["id"]
    listed = as_json(nyx(db, "tenant", "list", "--json"))
    assert [t["slug"] for t in listed] == ["acme", "clarait", "nyx"]
    assert {t["slug"]: t["id"] for t in listed}["acme"] == added["id"]
    assert as_json(nyx(db, "--json", "tenant", "list")) == listed  # global --json too
    text = ok(nyx(db, "tenant", "list")).stdout
    assert "Acme Corp" in text and added["id"] in text
    assert ok(nyx(db, "tenant", "add", "plain")).stdout.startswith("added tenant plain")


def test_duplicate_slug_is_one_line_naming_the_fix_and_writes_nothing(db: str) -> None:
    before = counts(db)
    one_line_error(nyx(db, "tenant", "add", "nyx", "--name", "Other"), "already exists",
                   "tenant list")  # fmt: skip
    assert counts(db) == before
    store = open_store(db)
    try:
        assert store.find_tenant("nyx").name != "Other"
    finally:
        store.dispose()


def test_project_add_and_list_with_tenant_filter(db: str) -> None:
    ok(nyx(db, "tenant", "add", "acme"))
    added = as_json(nyx(db, "project", "add", "acme", "Widgets", "--description", "w",
                        "--json"))  # fmt: skip
    assert added["tenant"] == "acme" and added["name"] == "Widgets" and added["id"]
    mine = as_json(nyx(db, "project", "list", "--tenant", "acme", "--json"))
    assert [(p["tenant"], p["name"]) for p in mine] == [("acme", "Widgets")]
    everyone = as_json(nyx(db, "project", "list", "--json"))
    assert ("acme", "Widgets") in {(p["tenant"], p["name"]) for p in everyone}
    assert {p["tenant"] for p in everyone} == {"acme", "clarait", "nyx"}
    nyx_only = as_json(nyx(db, "project", "list", "--tenant", "nyx", "--json"))
    assert {p["tenant"] for p in nyx_only} == {"nyx"} and "BRbase" in {p["name"] for p in nyx_only}
    before = counts(db)
    one_line_error(nyx(db, "project", "add", "acme", "Widgets"), "already exists")
    assert counts(db) == before


def test_unknown_tenant_is_one_line_and_writes_nothing(db: str) -> None:
    before = counts(db)
    for args in (
        ["project", "add", "nope", "X"],
        ["project", "list", "--tenant", "nope"],
        ["list", "--tenant", "nope"],
        ["run", SPEC, "--tenant", "nope", "--project", "BRbase", "--provider", "offline"],
    ):
        one_line_error(nyx(db, *args), "'nope' not found", "tenant list")
    assert counts(db) == before


@pytest.mark.parametrize("url", [UNREACHABLE, MALFORMED])
def test_bad_database_url_is_one_line(url: str) -> None:
    for args in (["init"], ["tenant", "list", "--json"], ["list"]):
        line = one_line_error(nyx(url, *args))
        assert "s3cret" not in line
        assert ("cannot reach" in line) if url == UNREACHABLE else ("malformed" in line)


def test_json_errors_are_one_json_object(db: str) -> None:
    """With ``--json`` an error was the same plain text line as without it."""
    for args in (["list", "--tenant", "nope", "--json"], ["--json", "show", "no-such-id"]):
        line = one_line_error(nyx(db, *args))
        error = json.loads(line)
        assert error["kind"] == "NotFound" and "not found" in error["error"], error
        assert error["hint"] and error["hint"] in error["error"]
    line = one_line_error(nyx(UNREACHABLE, "tenant", "list", "--json"), "cannot reach")
    assert json.loads(line)["kind"] == "StoreUnavailable" and "s3cret" not in line


# --- --json on every command ---------------------------------------------------------------


def test_every_command_has_json_output(db: str, tmp_path: Path) -> None:
    covered: set[str] = set()

    def check(path: str, *args: str, stream: bool = False) -> Any:
        covered.add(path)
        result = ok(nyx(db, *path.split(), *args, "--json"))
        return events(result) if stream else json.loads(result.stdout)

    check("init")
    check("seed")
    check("tenant add", "acme")
    check("tenant list")
    check("project add", "acme", "Widgets")
    check("project list")
    run = check("run", SPEC, "--tenant", "nyx", "--project", "BRbase", "--provider", "offline",
                stream=True)  # fmt: skip
    wf = run[0]["workflow_id"]
    assert check("show", wf)["id"] == wf
    assert wf in {w["id"] for w in check("list")}
    mark_running(db, wf)  # pause only applies to a running workflow
    assert check("pause", wf)["workflow_id"] == wf
    resumed = check("resume", wf, stream=True)
    assert resumed[0]["workflow_id"] == wf and resumed[-1]["type"] == "workflow_completed"
    assert check("demo", stream=True)[-1]["type"] == "workflow_completed"
    assert check("clone", wf)
    queued = check(
        "submit", SPEC, "--tenant", "nyx", "--project", "BRbase", "--provider", "offline"
    )
    assert queued["status"] == "queued"
    assert check("worker", "--exit-when-idle", "--max-workflows", "1")["led"] == [
        queued["workflow_id"]
    ]
    assert check("workers") == []  # the worker unregistered when it exited
    revision = check("rerun", wf, "--provider", "offline", stream=True)
    again = revision[0]["workflow_id"]
    assert again != wf and revision[-1]["type"] == "workflow_completed"
    assert [r["id"] for r in check("revisions", again)] == [wf, again]
    assert [w["id"] for w in check("compare", wf, again)["workflows"]] == [wf, again]
    assert check("digest", again, "--facts-only")[0]["kind"] == "fact:calls"
    assert check("migrate", "BRbase", "--from", "nyx", "--to", "clarait")
    assert check("cancel-batch", wf) == []  # an offline run has no provider batch
    out = tmp_path / "features.csv"  # the sample's fan-out step as a table
    assert check("export", wf, "--out", str(out)) == {"rows": 13, "out": str(out)}
    assert {e["endpoint"] for e in check("models", "offline")} == {"offline"}
    covered.add("batch")  # runs papermill kernels: its --json is checked in tests/test_batch.py
    assert covered == leaf_commands(cli), "add the new command to this test"


def test_run_offline_then_show_lists_steps_and_items(db: str) -> None:
    found = events(ok(nyx(db, "run", SPEC, "--tenant", "nyx", "--project", "BRbase",
                          "--provider", "offline", "--json")))  # fmt: skip
    started = found[0]
    assert started["tenant"] == "nyx" and started["project"] == "BRbase"
    assert found[-1]["type"] == "workflow_completed"
    wf = started["workflow_id"]
    shown = as_json(nyx(db, "show", wf, "--json"))
    assert shown["status"] == "completed" and shown["tenant"] == "nyx"
    steps = shown["steps"]
    assert [s["order"] for s in steps] == list(range(len(steps))) and len(steps) > 3
    assert all(s["status"] == "completed" and s["output"] for s in steps)
    fan_out = [s for s in steps if s["type"] == "fan-out"]
    assert fan_out and all(len(s["items"]) == s["items_total"] > 0 for s in fan_out)
    for step in fan_out:
        assert [i["idx"] for i in step["items"]] == list(range(step["items_total"]))
        assert all(i["status"] == "completed" and i["output"] for i in step["items"])
    assert shown["by_provider"] and shown["by_provider"][0]["provider"] == "offline"
    text = ok(nyx(db, "show", wf)).stdout
    assert "status: completed" in text and "provider calls:" in text


def test_pause_a_running_workflow_then_resume_it(db: str) -> None:
    env = {**os.environ, "NYXNB_OFFLINE_LATENCY_MS": "300"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nyxnb", "--db", db, "run", SPEC, "--tenant", "nyx",
         "--project", "BRbase", "--provider", "offline", "--concurrency", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]
    wf = json.loads(lines[0])["workflow_id"]
    while '"fan_out_progress"' not in lines[-1] and lines[-1]:
        lines.append(proc.stdout.readline())
    assert as_json(nyx(db, "pause", wf, "--json")) == {"workflow_id": wf, "pause_requested": True}
    rest, stderr = proc.communicate(timeout=30)
    run_events = [json.loads(x) for x in [*lines, *rest.splitlines()] if x.strip()]
    assert proc.returncode == 1, stderr  # run exits 0 only when the workflow completed
    assert run_events[-1]["type"] == "workflow_paused"
    paused = as_json(nyx(db, "show", wf, "--json"))
    assert paused["status"] == "paused"
    fan = next(s for s in paused["steps"] if s["type"] == "fan-out")
    done_before = {i["idx"] for i in fan["items"] if i["status"] == "completed"}
    assert 0 < len(done_before) < fan["items_total"]

    resumed = events(ok(nyx(db, "resume", wf, "--json")))
    assert resumed[0]["workflow_id"] == wf and resumed[0]["resumed"] is True
    assert resumed[-1]["type"] == "workflow_completed"
    redone = {
        e["fan_out_index"] - 1
        for e in resumed
        if e["type"] == "fan_out_progress" and e["name"] == fan["name"]
    }
    assert redone == set(range(fan["items_total"])) - done_before
    assert not redone & done_before  # committed items are never called again
    final = as_json(nyx(db, "show", wf, "--json"))
    assert final["status"] == "completed"
    assert all(s["status"] == "completed" for s in final["steps"])


def mark_running(db: str, workflow_id: str) -> None:
    """Make a finished workflow look like one that is running (as another process would)."""
    store = open_store(db)
    try:
        with store.session() as s:
            s.get_one(Workflow, workflow_id).status = "running"
    finally:
        store.dispose()


def test_pause_of_a_workflow_that_is_not_running_says_so(db: str) -> None:
    wf = run_offline(db)
    one_line_error(nyx(db, "pause", wf), "is completed, not running")


def test_tenant_option_enforces_scope(db: str) -> None:
    wf = run_offline(db)
    missing = "00000000-0000-4000-8000-000000000000"
    for command in ("show", "resume", "pause"):
        foreign = one_line_error(nyx(db, command, wf, "--tenant", "clarait"), "not found")
        absent = one_line_error(nyx(db, command, missing, "--tenant", "clarait"), "not found")
        assert foreign.replace(wf, "<id>") == absent.replace(missing, "<id>"), command
    store = open_store(db)
    try:
        with store.session() as s:
            assert s.get_one(Workflow, wf).pause_requested is False
    finally:
        store.dispose()
    assert as_json(nyx(db, "show", wf, "--tenant", "nyx", "--json"))["id"] == wf
    one_line_error(nyx(db, "show", wf, "--tenant", "nope"), "'nope' not found")


def test_demo_completes_on_a_fresh_store(sqlite_url: str) -> None:
    result = ok(nyx(sqlite_url, "demo"))
    assert "completed" in result.stdout.lower()
    store = open_store(sqlite_url)
    try:
        with store.session() as s:
            wf = s.scalars(select(Workflow).order_by(Workflow.created_at.desc())).first()
            assert wf is not None and wf.status == "completed"
            steps = s.scalars(select(WorkflowStep).where(WorkflowStep.workflow_id == wf.id))
            assert all(st.status == "completed" for st in steps)
            assert s.scalar(select(func.count()).select_from(StepItem)) > 0
    finally:
        store.dispose()


def test_a_second_demo_answers_from_the_cache(sqlite_url: str) -> None:
    """`nyxnb demo` turned the cache off: its second run called every step again."""
    ok(nyx(sqlite_url, "demo", "--latency-ms", "0"))
    ok(nyx(sqlite_url, "demo", "--latency-ms", "0"))
    store = open_store(sqlite_url)
    try:
        with store.session() as s:
            first, second = s.scalars(select(Workflow.id).order_by(Workflow.created_at)).all()[-2:]
            calls = select(LlmCall.cached).where(LlmCall.workflow_id == second)
            cached = list(s.scalars(calls))
            assert cached and all(cached), cached
            assert s.scalar(select(func.count()).where(LlmCall.workflow_id == first)) == len(cached)
    finally:
        store.dispose()


def test_list_filters_by_tenant(db: str, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    ok(nyx(db, "tenant", "add", "acme"))
    ok(nyx(db, "project", "add", "acme", "Widgets"))
    acme_wf = run_offline(db, "acme", "Widgets", str(spec))
    nyx_wf = run_offline(db)
    acme = as_json(nyx(db, "list", "--tenant", "acme", "--json"))
    assert [(w["id"], w["tenant"], w["project"]) for w in acme] == [(acme_wf, "acme", "Widgets")]
    nyx_rows = as_json(nyx(db, "list", "--tenant", "nyx", "--json"))
    assert {w["tenant"] for w in nyx_rows} == {"nyx"} and nyx_wf in {w["id"] for w in nyx_rows}
    everyone = as_json(nyx(db, "list", "--json"))
    ids = [w["id"] for w in everyone]
    assert ids.index(nyx_wf) < ids.index(acme_wf)  # newest first
    assert len(everyone) == len(acme) + len(nyx_rows)


# --- the real command in a subprocess -------------------------------------------------------


def test_python_m_nyxnb_exit_codes_and_one_line_errors(db: str) -> None:
    cases: list[tuple[list[str], int, str]] = [
        (["--db", db, "tenant", "list", "--json"], 0, ""),
        (["--db", db, "tenant", "add", "nyx"], 1, "already exists"),
        (["--db", UNREACHABLE, "init"], 1, "cannot reach"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXNB_")}
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-m", "nyxnb", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for args, _code, _needle in cases
    ]  # fmt: skip
    for proc, (args, code, needle) in zip(procs, cases, strict=True):
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, (args, stderr)
        assert "Traceback" not in stderr, args
        if code == 0:
            assert stderr == ""
            assert {t["slug"] for t in json.loads(stdout)} == {"nyx", "clarait"}
        else:
            assert len(stderr.splitlines()) == 1, (args, stderr)
            assert needle in stderr, (args, stderr)
            assert "s3cret" not in stderr
    assert time.monotonic() - started < 30
    assert counts(db)["tenants"] == 2  # the duplicate wrote nothing


def test_submit_takes_the_same_run_flags_as_run(db: str) -> None:
    """`nyxnb submit` records --batch, --max-cost, --rpm and --timeout with the queued workflow."""
    queued = as_json(nyx(db, "submit", SPEC, "--tenant", "nyx", "--project", "BRbase",
                         "--provider", "offline", "--batch", "--max-cost", "2.5", "--rpm", "30",
                         "--timeout", "12", "--no-cache", "--json"))  # fmt: skip
    store = open_store(db)
    try:
        with store.session() as session:
            spec = session.get_one(Workflow, queued["workflow_id"]).spec
    finally:
        store.dispose()
    defaults = spec["defaults"]
    assert defaults["batch"] is True and defaults["cache"] is False
    assert spec["max_cost_usd"] == 2.5 and defaults["timeouts"]["default"] == 12
    assert all(defaults["limits"][p]["rpm"] == 30 for p in ("anthropic", "google", "openai"))
