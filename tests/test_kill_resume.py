"""kill -9 of a running `nyxnb run` mid fan-out, then resume: every item once, none called twice."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time

import pytest
from sqlalchemy import func, select

import nyxnb
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep
from nyxnb.store.seed import seed
from tests._launch import nyxnb_proc

N_ITEMS = 40


def _spec(tmp_path) -> str:
    body = {
        "name": "killme",
        "defaults": {"provider": "offline", "fallback": [], "concurrency": 4, "cache": False},
        "steps": [
            {"name": "analysis", "persona": "Athena", "prompt": "Analyse {{ project.name }}"},
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "items": [{"heading": f"Feature {i}"} for i in range(N_ITEMS)],
                "prompt": "Design {{ item.heading }}",
            },
            {
                "name": "synthesis",
                "type": "synthesis",
                "persona": "Harmonia",
                "prompt": "{% for i in steps.features.items %}{{ i.output }}{% endfor %}",
            },
        ],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(body))
    return str(path)


def _run_and_signal(
    url: str, spec: str, after: int, sig: int, latency_ms: int
) -> tuple[subprocess.Popen[str], str, int]:
    """Start `nyxnb run --json`, send `sig` once `after` items completed.

    Returns the process (not yet waited for), the workflow id and the items seen completed.
    """
    args = ("run", spec, "--tenant", "nyx", "--project", "BRbase", "--json")
    proc = nyxnb_proc(url, *args, latency_ms=latency_ms)
    workflow_id, seen = "", 0
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        workflow_id = event["workflow_id"]
        if event["type"] == "fan_out_progress":
            seen = event["completed"]
            if seen >= after:
                if sig == signal.SIGSTOP:
                    _stop_between_transactions(proc, url)
                else:
                    proc.send_signal(sig)
                break
    return proc, workflow_id, seen


def _stop_between_transactions(proc: subprocess.Popen[str], url: str) -> None:
    """SIGSTOP a run at a moment it holds no transaction open.

    A run stalled inside a write transaction keeps its locks until it wakes: on SQLite the
    file's one write lock (every other writer waits), on PostgreSQL its row and table locks (a
    tenant move's LOCK TABLE waits, until the server ends the stalled session after
    NYXNB_PG_IDLE_TX_S).  The stall these tests model is the common one, between two short
    transactions, so the process is stopped again until it holds none.
    """
    holds = _holds_sqlite_lock if url.startswith("sqlite") else _holds_pg_transaction
    for _ in range(200):
        proc.send_signal(signal.SIGSTOP)
        if not holds(url):
            return
        proc.send_signal(signal.SIGCONT)  # stopped mid-transaction: let it finish it
        time.sleep(0.01)
    raise AssertionError("the run never left its write transaction")


def _holds_sqlite_lock(url: str) -> bool:
    probe = sqlite3.connect(url.split("///", 1)[1], timeout=0.05, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def _holds_pg_transaction(url: str) -> bool:
    """Whether another session of this test's database is inside a transaction."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return bool(
                conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                    )
                )
            )
    finally:
        engine.dispose()


def _set_lease(store, workflow_id: str, seconds: float) -> None:
    """Make the stopped (or killed) run's lease expire ``seconds`` from now."""
    from datetime import timedelta

    from sqlalchemy import update

    from nyxnb.store.models import utcnow

    with store.session() as s:
        s.execute(
            update(Workflow)
            .where(Workflow.id == workflow_id)
            .values(lease_expires_at=utcnow() + timedelta(seconds=seconds))
        )


def _run_and_kill(url: str, spec: str, kill_after: int) -> tuple[str, int]:
    """Start `nyxnb run`, kill -9 it after `kill_after` completed items; (workflow id, seen)."""
    proc, workflow_id, seen = _run_and_signal(url, spec, kill_after, signal.SIGKILL, 15)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return workflow_id, seen


def _fan_out_state(store, workflow_id):
    with store.session() as s:
        step = s.scalar(
            select(WorkflowStep).where(
                WorkflowStep.workflow_id == workflow_id, WorkflowStep.name == "features"
            )
        )
        done = s.scalars(
            select(StepItem.idx).where(StepItem.step_id == step.id, StepItem.status == "completed")
        ).all()
        calls = dict(
            s.execute(
                select(LlmCall.item_idx, func.count())
                .where(LlmCall.step_id == step.id, LlmCall.outcome == "ok")
                .group_by(LlmCall.item_idx)
            ).all()
        )
        items = s.scalars(
            select(StepItem).where(StepItem.step_id == step.id).order_by(StepItem.idx)
        ).all()
    return set(done), calls, items


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_kill_9_mid_fan_out_then_resume(store, store_url, tmp_path, trial):
    seed(store)
    rng = random.Random(1000 + trial)
    spec = _spec(tmp_path)
    workflow_id, seen = _run_and_kill(store_url, spec, kill_after=rng.randint(1, N_ITEMS - 2))
    committed_before, _, _ = _fan_out_state(store, workflow_id)
    assert len(committed_before) >= seen  # everything reported was durable

    result = nyxnb.resume(workflow_id, store=store)  # the dead holder's lease is no obstacle
    assert result.ok, result.error
    done, calls, items = _fan_out_state(store, workflow_id)
    assert done == set(range(N_ITEMS))
    assert [i.idx for i in items] == list(range(N_ITEMS))  # every item present once
    assert all(calls.get(i) == 1 for i in range(N_ITEMS)), calls  # nothing called twice
    resumed_calls = [e for e in result.events if e.type == "fan_out_progress"]
    assert len(resumed_calls) == N_ITEMS - len(committed_before)
    with store.session() as s:
        assert s.get_one(Workflow, workflow_id).status == "completed"


@pytest.mark.slow
def test_two_processes_racing_to_resume_one_workflow(store, store_url, tmp_path):
    """Both start `nyxnb resume WF` at once: one runs it, the other gets a clear lease error."""
    seed(store)
    spec = _spec(tmp_path)
    workflow_id = nyxnb.create_workflow(store, spec, tenant="nyx", project="BRbase")
    # 100 ms a call: the run lasts over a second, so the two starts always overlap it
    procs = [nyxnb_proc(store_url, "resume", workflow_id, latency_ms=100) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = outs[[p.returncode for p in procs].index(1)]
    assert "is being run by" in loser[1] and "Traceback" not in loser[1]
    assert len(loser[1].strip().splitlines()) == 1
    done, calls, items = _fan_out_state(store, workflow_id)
    assert done == set(range(N_ITEMS)) and all(calls.get(i) == 1 for i in range(N_ITEMS))


@pytest.mark.slow
def test_ctrl_c_pauses_cleanly_then_resume_finishes(sqlite_store, sqlite_url, tmp_path):
    """SIGINT mid fan-out: exit 130 with the resume hint, no step left running, nothing lost."""
    seed(sqlite_store)
    proc, workflow_id, _ = _run_and_signal(sqlite_url, _spec(tmp_path), 8, signal.SIGINT, 30)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"nyxnb resume {workflow_id}" in err and "Traceback" not in err
    with sqlite_store.session() as s:
        assert s.get_one(Workflow, workflow_id).status == "paused"
        statuses = s.scalars(
            select(WorkflowStep.status).where(WorkflowStep.workflow_id == workflow_id)
        ).all()
    assert "running" not in statuses
    result = nyxnb.resume(workflow_id, store=sqlite_store)
    assert result.ok
    done, calls, _ = _fan_out_state(sqlite_store, workflow_id)
    assert done == set(range(N_ITEMS)) and all(calls.get(i) == 1 for i in range(N_ITEMS))


@pytest.mark.slow
def test_stopped_runner_past_its_ttl_cannot_corrupt_the_run_that_took_over(
    store, store_url, tmp_path
):
    """SIGSTOP a run past its lease TTL, resume elsewhere to the end, SIGCONT: every write of
    the woken run is refused by the lease fence; the finished run stays exactly as it was."""
    from nyxnb.engine.durable import lease

    seed(store)
    proc, workflow_id, _ = _run_and_signal(store_url, _spec(tmp_path), 6, signal.SIGSTOP, 150)
    try:
        time.sleep(lease.TTL_S + 1.5)  # the stopped holder's lease expires
        result = nyxnb.resume(workflow_id, store=store)
        assert result.ok, result.error
        finished = _fan_out_state(store, workflow_id)
        with store.session() as s:
            before = {
                st.name: (st.status, st.output) for st in
                s.scalars(select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id))
            }  # fmt: skip
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "lost its lease" in out
    done, calls, items = _fan_out_state(store, workflow_id)
    assert done == finished[0] == set(range(N_ITEMS))
    assert [(i.idx, i.output, i.status) for i in items] == [
        (i.idx, i.output, i.status) for i in finished[2]
    ]
    with store.session() as s:
        wf = s.get_one(Workflow, workflow_id)
        after = {
            st.name: (st.status, st.output) for st in
            s.scalars(select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id))
        }  # fmt: skip
    assert wf.status == "completed" and after == before


@pytest.mark.slow
def test_ctrl_c_keeps_the_answers_already_in_flight(sqlite_store, sqlite_url, tmp_path):
    """SIGINT at C=8: the 8 calls in flight are paid for, so they are committed before the
    pause, and resume calls only the items that were never started."""
    seed(sqlite_store)
    body = json.loads(open(_spec(tmp_path)).read())
    body["defaults"]["concurrency"] = 8
    path = tmp_path / "c8.json"
    path.write_text(json.dumps(body))
    proc, workflow_id, seen = _run_and_signal(sqlite_url, str(path), 8, signal.SIGINT, 300)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done, calls, _ = _fan_out_state(sqlite_store, workflow_id)
    assert len(done) >= seen + 8, (len(done), seen)  # every call in flight was kept
    with sqlite_store.session() as s:  # 'sent' rows reserved for calls never made: taken back
        left = s.scalar(select(func.count()).where(
            LlmCall.workflow_id == workflow_id, LlmCall.outcome == "sent"))  # fmt: skip
    assert left == 0
    result = nyxnb.resume(workflow_id, store=sqlite_store)
    assert result.ok
    resumed = [e for e in result.events if e.type == "fan_out_progress"]
    assert len(resumed) == N_ITEMS - len(done)  # nothing bought twice
    done, calls, _ = _fan_out_state(sqlite_store, workflow_id)
    assert done == set(range(N_ITEMS)) and all(calls.get(i) == 1 for i in range(N_ITEMS))


@pytest.mark.slow
def test_persona_edited_before_resume_rebuys_nothing(sqlite_store, sqlite_url, tmp_path):
    """kill -9 mid fan-out, add a tenant override of the fan-out's persona, resume: the run
    uses the prompts frozen at its creation, so no committed item is erased or bought again."""
    from nyxnb.store.models import Persona, Tenant

    seed(sqlite_store)
    workflow_id, _ = _run_and_kill(sqlite_url, _spec(tmp_path), kill_after=15)
    committed, _, before = _fan_out_state(sqlite_store, workflow_id)
    with sqlite_store.session() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.slug == "nyx"))
        s.add(Persona(tenant_id=tenant.id, name="Cael", system_prompt="You are someone else."))
    result = nyxnb.resume(workflow_id, store=sqlite_store)
    assert result.ok, result.error
    resumed = [e for e in result.events if e.type == "fan_out_progress"]
    assert len(resumed) == N_ITEMS - len(committed)
    done, calls, after = _fan_out_state(sqlite_store, workflow_id)
    assert all(calls.get(i) == 1 for i in range(N_ITEMS)), calls
    kept = {i.idx: i.output for i in before if i.idx in committed}
    assert {i.idx: i.output for i in after if i.idx in committed} == kept
    assert all("someone else" not in (i.output or "") for i in after)  # one persona per run


@pytest.mark.slow
def test_ledger_never_counts_less_than_was_paid_after_kill_9(
    sqlite_store, sqlite_url, tmp_path, fake_server
):
    """kill -9 with 8 calls in flight through the real openai SDK: each call the provider
    received has a ledger row ('sent' before the call, completed after), so spend (and
    max_cost_usd) is never below the truth; resume completes the ledger."""
    from nyxnb.testing import Reply

    seed(sqlite_store)
    fake_server.set_default("openai", Reply(latency_ms=250))
    body = json.loads(open(_spec(tmp_path)).read())
    body["defaults"].update(provider="openai", model="gpt-4o-mini", concurrency=8)
    path = tmp_path / "paid.json"
    path.write_text(json.dumps(body))
    proc, workflow_id, _ = _run_and_signal(sqlite_url, str(path), 10, signal.SIGKILL, 0)
    proc.wait(timeout=30)
    paid = fake_server.hits["openai"]
    with sqlite_store.session() as s:
        rows = s.scalars(select(LlmCall).where(LlmCall.workflow_id == workflow_id)).all()
    sent = [r for r in rows if r.outcome == "sent"]
    assert len([r for r in rows if r.outcome in ("ok", "sent")]) >= paid > 0
    assert sent and all(r.cost_usd > 0 for r in sent)  # counted at an estimate
    wf_spent = sum(r.cost_usd for r in rows)
    assert wf_spent >= sum(r.cost_usd for r in rows if r.outcome == "ok")
    result = nyxnb.resume(workflow_id, store=sqlite_store)
    assert result.ok, result.error
    with sqlite_store.session() as s:
        counted = s.scalar(select(func.count()).select_from(LlmCall).where(
            LlmCall.workflow_id == workflow_id, LlmCall.outcome.in_(["ok", "sent"])))  # fmt: skip
    assert counted >= fake_server.hits["openai"]  # still never below the truth


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["kill-9", "stopped"])
def test_an_expired_lease_does_not_block_a_tenant_move(store, store_url, tmp_path, sig):
    """A run killed (or stopped) mid fan-out: its live lease blocks moving the project; once
    the lease is past its TTL the move succeeds, a stopped run that wakes up is fenced off, and
    the resumed run finishes in the new tenant with nothing left behind in the old one."""
    from nyxnb.errors import MigrationError
    from nyxnb.tenants.migrate import apply_migration, plan_migration

    seed(store)
    proc, workflow_id, _ = _run_and_signal(store_url, _spec(tmp_path), 6, sig, 100)
    try:
        if sig == signal.SIGKILL:
            proc.wait(timeout=30)
        # The lease's times are set here, not waited for: a loaded machine took longer than the
        # run's short TTL to reach the first move, which then found the lease already expired.
        _set_lease(store, workflow_id, 60)  # the run stands still holding a live lease
        with pytest.raises(MigrationError, match="is running"):
            apply_migration(store, plan_migration(store, "BRbase", "nyx", "clarait"), "rename")
        _set_lease(store, workflow_id, -1)  # past its TTL: nobody renewed it
        plan = plan_migration(store, "BRbase", "nyx", "clarait")
        assert dict(apply_migration(store, plan, "rename").counts)["workflows"] >= 1
    finally:
        if sig == signal.SIGSTOP:
            proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGSTOP:  # woke up after the move: refused, wrote nothing
        assert proc.returncode == 1 and "lost its lease" in out and "Traceback" not in err, err
    clarait = store.find_tenant("clarait").id
    result = nyxnb.resume(workflow_id, store=store)
    assert result.ok, result.error
    done, _, _ = _fan_out_state(store, workflow_id)
    assert done == set(range(N_ITEMS))
    with store.session() as s:
        for model in (Workflow, WorkflowStep, LlmCall):
            key = model.id if model is Workflow else model.workflow_id
            tenants = set(s.scalars(select(model.tenant_id).where(key == workflow_id)))
            assert tenants == {clarait}, model.__name__
        steps = select(WorkflowStep.id).where(WorkflowStep.workflow_id == workflow_id)
        item_tenants = set(s.scalars(select(StepItem.tenant_id).where(StepItem.step_id.in_(steps))))
        assert item_tenants == {clarait}
    with store.tenant("nyx") as s:  # the old tenant sees nothing of it
        assert s.get(Workflow, workflow_id) is None
