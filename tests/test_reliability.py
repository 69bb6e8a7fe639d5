"""Faults nobody planned for: each fails its step and the workflow cleanly, and resume continues.

The rule: an unexpected error in a step marks that step and the workflow ``failed`` with the
error recorded, releases the lease, and the CLI exits 1 with one line; `nyxnb resume` continues.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import DBAPIError

import nyxnb
from nyxnb import events as ev
from nyxnb.store import open_store
from nyxnb.store.models import LlmCall, Project, Workflow, WorkflowStep
from nyxnb.store.seed import seed
from tests.helpers import minimal, three_steps


def _state(store, workflow_id: str) -> tuple[Workflow, dict[str, WorkflowStep]]:
    with store.session() as s:
        wf = s.get_one(Workflow, workflow_id)
        steps = s.scalars(select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id))
        return wf, {st.name: st for st in steps}


def _assert_failed_cleanly(store, workflow_id: str, step: str, needle: str) -> None:
    wf, steps = _state(store, workflow_id)
    assert wf.status == "failed" and needle in (wf.error or ""), wf.error
    assert steps[step].status == "failed" and needle in (steps[step].error or "")
    assert "running" not in {s.status for s in steps.values()}
    assert wf.lease_owner is None  # released: resume can start at once


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NYXNB_DB_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "nyxnb", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("template", "needle"),
    [("{{ 1/0 }}", "ZeroDivisionError"), ("{{ project.name + 1 }}", "TypeError")],
)
def test_template_error_at_render_time_fails_the_step_then_resume_continues(
    sqlite_store, sqlite_url, tmp_path, template, needle
):
    minimal(sqlite_store)
    body = three_steps("tmpl", 3)
    body["steps"][2]["prompt"] = template
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(body))
    out = _cli(sqlite_url, "run", str(path), "--tenant", "nyx", "--project", "BRbase", "--json")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    events = [json.loads(line) for line in out.stdout.splitlines()]
    workflow_id = events[0]["workflow_id"]
    assert events[-1]["type"] == "workflow_failed" and needle in events[-1]["error"]
    _assert_failed_cleanly(sqlite_store, workflow_id, "synthesis", needle)
    # fix the template in place (the engine reads the step's prompt), then resume
    with sqlite_store.session() as s:
        step = s.scalar(select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id,
                                                   WorkflowStep.name == "synthesis"))  # fmt: skip
        step.prompt = "Summarise"
    resumed = _cli(sqlite_url, "resume", workflow_id)
    assert resumed.returncode == 0, resumed.stderr
    assert _state(sqlite_store, workflow_id)[0].status == "completed"


def _on_step_done(name: str, action: Any) -> Any:
    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.StepCompleted) and event.name == name:
            action()

    return on_event


def test_sqlite_write_lock_held_over_the_busy_timeout(tmp_path, monkeypatch):
    """Another program holds the write lock past the busy timeout mid-run: fail, then resume."""
    monkeypatch.setenv("NYXNB_SQLITE_BUSY_TIMEOUT_S", "0.3")
    path = tmp_path / "nyxnb.db"
    store = minimal(open_store(f"sqlite:///{path}"))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def hold_lock() -> None:  # from the run's own thread: the lock is held before it writes again
        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()

    result = nyxnb.run(three_steps("locked", 4), tenant="nyx", project="BRbase", store=store,
                       on_event=_on_step_done("analysis", hold_lock))  # fmt: skip
    assert result.status == "failed" and "database is locked" in (result.error or "")
    _assert_failed_cleanly(store, result.workflow_id, "features", "database is locked")
    assert nyxnb.resume(result.workflow_id, store=store).ok
    holder.close()


def test_full_disk_fails_the_step_then_resume_continues(sqlite_store):
    """The database can barely grow (SQLite's max_page_count, as a full disk): the fan-out's
    item rows do not fit, the short failure record does; once space is freed, resume finishes."""
    minimal(sqlite_store)
    full = {"on": False}

    @event.listens_for(sqlite_store.engine, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        if full["on"]:
            dbapi_conn.execute("SELECT count(*) FROM sqlite_master")  # reads the WAL's size too
            pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
            # room for small updates (the failure record), not for 30 items of 8 KB
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 8}")

    def fill_disk() -> None:
        full["on"] = True
        sqlite_store.engine.pool.dispose()  # every new connection sees the cap

    body = three_steps("full", 30)
    for item in body["steps"][1]["items"]:
        item["body"] = "x" * 8000  # the items need new pages
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=sqlite_store,
                       on_event=_on_step_done("analysis", fill_disk))  # fmt: skip
    assert result.status == "failed" and "full" in (result.error or ""), result.error
    full["on"] = False
    sqlite_store.engine.pool.dispose()
    _assert_failed_cleanly(sqlite_store, result.workflow_id, "features", "full")
    assert nyxnb.resume(result.workflow_id, store=sqlite_store).ok


@pytest.mark.postgres
def test_nul_byte_in_a_heading_on_postgres(pg_url):
    store = minimal(open_store(pg_url))
    body = three_steps("nul", 3)
    body["steps"][1]["items"][1]["heading"] = "Auth\x00z"
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert result.status == "failed" and "NUL" in (result.error or ""), result.error
    _assert_failed_cleanly(store, result.workflow_id, "features", "NUL")
    with store.session() as s:  # the spec snapshot is the input: fix it there, then resume
        wf = s.get_one(Workflow, result.workflow_id)
        step = s.scalar(select(WorkflowStep).where(WorkflowStep.workflow_id == wf.id,
                                                   WorkflowStep.name == "features"))  # fmt: skip
        config = dict(step.config)
        config["items"] = [{**i, "heading": i["heading"].replace("\x00", "")}
                           for i in config["items"]]  # fmt: skip
        step.config = config
    assert nyxnb.resume(result.workflow_id, store=store).ok
    store.dispose()


@pytest.mark.postgres
def test_300_character_project_name_on_postgres(pg_url):
    store = minimal(open_store(pg_url))
    out = _cli(pg_url, "project", "add", "nyx", "p" * 300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "200" in out.stderr, out.stderr
    with store.session() as s:  # a long name already in the store still runs (prompt text)
        s.scalar(select(Project)).name = "q" * 200
    result = nyxnb.run(three_steps("long", 2), tenant="nyx", project="q" * 200, store=store)
    assert result.ok, result.error
    store.dispose()


# -- bad files and secrets: one clear line each ---------------------------------------------------


def _one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr
    return out.stderr


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_corrupt_or_truncated_store_file_gives_one_line(tmp_path, damage):
    path = tmp_path / "nyxnb.db"
    url = f"sqlite:///{path}"
    minimal(open_store(url)).dispose()
    if damage == "corrupt":
        with open(path, "r+b") as fh:
            fh.write(b"this is not a database" * 8)
    else:
        for extra in ("-wal", "-shm"):
            (tmp_path / f"nyxnb.db{extra}").unlink(missing_ok=True)
        os.truncate(path, path.stat().st_size // 3)
    _one_line_error(_cli(url, "list"), "corrupt or truncated", str(path))


def test_read_only_store_file_gives_one_line(tmp_path):
    path = tmp_path / "nyxnb.db"
    minimal(open_store(f"sqlite:///{path}")).dispose()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(three_steps("ro", 2)))
    url = f"sqlite:///file:{path}?mode=ro&uri=true"  # read-only even for root
    out = _cli(url, "run", str(spec), "--tenant", "nyx", "--project", "BRbase")
    _one_line_error(out, "cannot be written", str(path))


def test_non_utf8_spec_gives_one_line(sqlite_store, sqlite_url, tmp_path):
    minimal(sqlite_store)
    spec = tmp_path / "spec.yaml"
    spec.write_bytes("name: caf\u00e9\nsteps: [{name: a, prompt: hi}]\n".encode("latin-1"))
    out = _cli(sqlite_url, "run", str(spec), "--tenant", "nyx", "--project", "BRbase")
    _one_line_error(out, "not UTF-8", "spec.yaml")


def test_json_spec_with_unicode_escapes_for_emoji_is_parsed_as_json(sqlite_store, tmp_path):
    minimal(sqlite_store)
    body = three_steps("rocket \U0001f680", 2)
    body["steps"][0]["prompt"] = "Analyse {{ project.name }} \U0001f680"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(body))  # ensure_ascii: "\ud83d\ude80"
    assert "\\ud83d\\ude80" in spec.read_text()
    result = nyxnb.run(str(spec), tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    assert _state(sqlite_store, result.workflow_id)[0].name == "rocket \U0001f680"
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "steps": [}')
    with pytest.raises(nyxnb.SpecError, match="not valid JSON"):
        nyxnb.load_spec(str(bad))


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:S3CRETPW@127.0.0.1:1/db",
        "postgresql+psycopg://u:S3CRETPW@127.0.0.1:1/db",
        "mysql://u:S3CRETPW@127.0.0.1:1/db",
    ],
)
def test_store_url_password_is_redacted_from_errors(url):
    err = _one_line_error(_cli(url, "list"))
    assert "S3CRETPW" not in err, err


# -- a 200 answer that is not the provider's JSON ------------------------------------------------


class _Garbage200(BaseHTTPRequestHandler):
    """Answers every request 200 with a body no SDK can decode (test-local fault mode)."""

    body = b""
    content_type = "application/json"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", self.content_type)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.mark.parametrize("provider", ["anthropic", "openai", "google"])
@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b'{"id": "msg_1", "content": [', "application/json"),
     (b"<html><body>502 Bad Gateway</body></html>", "text/html")],
)  # fmt: skip
def test_malformed_or_html_200_falls_back_and_is_in_the_ledger(
    sqlite_store, monkeypatch, provider, body, content_type
):
    handler = type("H", (_Garbage200,), {"body": body, "content_type": content_type})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"anthropic": ("ANTHROPIC_BASE_URL", base), "openai": ("OPENAI_BASE_URL", base + "/v1"),
           "google": ("GOOGLE_GEMINI_BASE_URL", base)}[provider]  # fmt: skip
    monkeypatch.setenv(*env)
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(key, "sk-test-not-a-real-key")
    minimal(sqlite_store)
    spec = three_steps("garbage", 2)
    spec["defaults"].update(provider=provider, fallback=["offline"])
    fast = nyxnb.RetryPolicy(max_attempts=2, initial_delay_s=0.01, max_delay_s=0.02)
    try:
        result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=sqlite_store, retry=fast)
    finally:
        server.shutdown()
    assert result.ok, result.error
    with sqlite_store.session() as s:
        rows = s.scalars(select(LlmCall).where(LlmCall.workflow_id == result.workflow_id)).all()
    failed = [r for r in rows if r.provider == provider]
    assert failed and all(r.outcome == "error" and "malformed" in (r.error or "") for r in failed)
    assert {r.provider for r in rows if r.outcome == "ok"} == {"offline"}


@pytest.mark.postgres
def test_a_session_stalled_inside_a_transaction_frees_its_locks_on_postgres(pg_url, monkeypatch):
    """A process stalled mid-transaction (SIGSTOP, a frozen VM) holds row locks; the server
    ends the idle transaction (``NYXNB_PG_IDLE_TX_S``) and another writer gets the row."""
    monkeypatch.setenv("NYXNB_PG_IDLE_TX_S", "1")
    stalled, other = open_store(pg_url), open_store(pg_url)
    seed(stalled)
    with stalled.engine.connect() as conn:
        conn.begin()
        conn.execute(text("UPDATE tenants SET name = name"))  # row locks, then nothing
        with other.engine.connect() as second:
            with second.begin():
                second.execute(text("SET LOCAL lock_timeout = '20s'"))
                second.execute(text("UPDATE tenants SET name = name"))  # waits ~1 s, not 20
        with pytest.raises(DBAPIError, match="idle-in-transaction"):  # ended by the server
            conn.execute(text("SELECT 1"))
    stalled.dispose()
    other.dispose()


@pytest.mark.postgres
def test_a_urls_own_postgres_options_are_kept_beside_the_idle_timeout(pg_url, monkeypatch):
    monkeypatch.setenv("NYXNB_PG_IDLE_TX_S", "7")
    store = open_store(f"{pg_url}?options=-c%20application_name%3Dnyx-own")
    with store.engine.connect() as conn:
        assert conn.scalar(text("SHOW application_name")) == "nyx-own"
        assert conn.scalar(text("SHOW idle_in_transaction_session_timeout")) == "7s"
    store.dispose()
