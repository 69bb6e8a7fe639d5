"""A PostgreSQL restart mid-run: the run reconnects (pre-ping and retried writes) and either
finishes or fails cleanly; resume then finishes with every item called once.

Runs its own server on a private port and data folder (never the shared test server).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

import nyxnb
from nyxnb import events as ev
from nyxnb.store import open_store
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep
from tests.helpers import minimal, three_steps

PGBIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
PGROOT = Path(f"/tmp/pg-reliability-{os.getpid()}")
PORT = 54000 + random.Random(os.getpid()).randint(100, 899)
N = 80
CI = Path(__file__).resolve().parent.parent / ".ci" / "pg.sh"


def _pg_ctl(*args: str) -> None:
    cmd = [str(PGBIN / "pg_ctl"), "-D", str(PGROOT / "data"), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def own_server():
    if PGBIN is None or not os.environ.get("NYXNB_TEST_PG_URL") or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL binaries (the suite's PG tests are enabled)")
    env = {**os.environ, "PGPORT": str(PORT), "PGROOT": str(PGROOT)}
    url = subprocess.run(["bash", str(CI), "start"], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()  # fmt: skip
    yield url
    subprocess.run(["bash", str(CI), "stop"], env=env, capture_output=True, timeout=60)
    shutil.rmtree(PGROOT, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_restart_mid_run(own_server, monkeypatch):
    monkeypatch.setenv("NYXNB_OFFLINE_LATENCY_MS", "150")
    store = minimal(open_store(own_server))
    spec = three_steps("restart", N, concurrency=4)  # ~3 s of fan-out
    restarted, stopped = threading.Event(), {"at": float("inf")}

    def restart() -> None:
        _pg_ctl("-m", "immediate", "stop")  # every connection dies at once
        stopped["at"] = time.monotonic()
        time.sleep(0.2)
        _pg_ctl("-w", "-l", str(PGROOT / "log"), "-o", f"-c listen_addresses=127.0.0.1 -p {PORT} "
                f"-k {PGROOT}/sock -c fsync=off", "start")  # fmt: skip
        restarted.set()

    def on_event(event: ev.Event) -> None:  # mid fan-out
        if isinstance(event, ev.FanOutProgress) and event.completed == 4:
            threading.Thread(target=restart, daemon=True).start()

    result = nyxnb.run(spec, tenant="nyx", project="BRbase", store=store, on_event=on_event)
    ended = time.monotonic()
    assert restarted.wait(30)
    assert stopped["at"] < ended  # the server went away while the run was going
    with store.session() as s:
        wf = s.get_one(Workflow, result.workflow_id)
        assert wf.status == result.status and wf.lease_owner is None
        steps = s.scalars(select(WorkflowStep.status).where(WorkflowStep.workflow_id == wf.id))
        assert "running" not in steps.all()
    if not result.ok:  # failed cleanly, with the database error recorded: resume finishes
        assert result.status == "failed" and result.error
        assert nyxnb.resume(result.workflow_id, store=store).ok
    with store.session() as s:
        step = s.scalar(select(WorkflowStep).where(WorkflowStep.workflow_id == result.workflow_id,
                                                   WorkflowStep.name == "features"))  # fmt: skip
        done = s.scalar(select(func.count()).select_from(StepItem).where(
            StepItem.step_id == step.id, StepItem.status == "completed"))  # fmt: skip
        per_item = s.execute(
            select(LlmCall.item_idx, func.count())
            .where(LlmCall.step_id == step.id, LlmCall.outcome == "ok")
            .group_by(LlmCall.item_idx)
        ).all()
        assert s.get_one(Workflow, result.workflow_id).status == "completed"  # fmt: skip
    assert done == N and all(n == 1 for _, n in per_item), per_item
    store.dispose()
