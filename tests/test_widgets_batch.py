"""A provider batch in the progress views: its own state, its line, and the Cancel batch button."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

import nyxnb
from nyxnb import events as ev
from nyxnb.cli.main import cli
from nyxnb.engine.workflows import create_workflow
from nyxnb.notebook.progress import TextProgress
from nyxnb.notebook.state import SUBMITTING, BatchLine, ProgressState
from nyxnb.notebook.widgets import WorkflowProgress
from nyxnb.store.seed import seed
from nyxnb.testing.batches import FakeBatchServer
from tests.batch_helpers import N_ITEMS, batch_spec, fan_out, ok_items

#: A first poll at once, then 30 s: a run that ends quickly after a cancel saw it in the store.
SLOW_POLL = {"initial_s": 30.0, "max_s": 60.0}


def _batch_spec(fallback: str = "live") -> dict:
    spec = batch_spec(fallback=fallback)
    spec["defaults"]["batch_poll"] = SLOW_POLL
    return spec


@pytest.fixture
def slow_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchServer]:
    with FakeBatchServer(delay_s=120.0) as srv:
        srv.patch_env(monkeypatch)
        yield srv


def _until(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _cancels(srv: FakeBatchServer) -> list[str]:
    return [path for _, path in srv.batches.calls if path.endswith("/cancel")]


def _assert_canceled_then_live(store, srv: FakeBatchServer, workflow_id: str) -> None:
    """The fake's batch was canceled; its even items came from it, the odd ones live, once."""
    assert _cancels(srv) == ["/v1/messages/batches/msgbatch_fake0001/cancel"]
    assert len(srv.batches.batches) == 1 and srv.batches.batches["msgbatch_fake0001"].canceled
    _, calls, batches = fan_out(store, workflow_id)
    ok = [c for c in calls if c.outcome == "ok"]
    assert ok_items(calls) == list(range(N_ITEMS))  # nothing lost, nothing bought twice
    assert sorted(c.item_idx for c in ok if c.service_tier == "batch") == list(range(0, 12, 2))
    assert sorted(c.item_idx for c in ok if c.service_tier == "live") == list(range(1, 12, 2))
    assert [b.state for b in batches] == ["ended"]


# --- the line, in text and in the state -------------------------------------------------------


def _events() -> list[ev.Event]:
    step = {"name": "features", "order": 1, "step_type": "fan-out"}
    return [
        ev.WorkflowStarted("wf", name="w", total_steps=2),
        ev.StepStarted("wf", **step, total_items=300),
        ev.BatchSubmitted("wf", **step, provider="anthropic", batch_id="msgbatch_01", items=300),
        ev.BatchProgress(
            "wf", **step, provider="anthropic", batch_id="msgbatch_01", done=120, total=300,
            counts={"processing": 180, "succeeded": 120}, poll_s=30.0,
        ),
    ]  # fmt: skip


def test_text_progress_and_the_state_show_the_same_batch_line() -> None:
    line = "anthropic batch msgbatch_01: 120/300 done, polling every 30 s"
    out = io.StringIO()
    text, state = TextProgress(out, live=False), ProgressState()
    for event in _events():
        text(event)
        state.apply(event)
    assert out.getvalue().splitlines()[-1].strip() == line
    assert state.steps[1].status == "batch" and state.steps[1].heading == "batch 120/300"
    assert line in state.table() and [b.batch_id for b in state.live_batches()] == ["msgbatch_01"]
    step = {"name": "features", "order": 1, "step_type": "fan-out"}
    ended = ev.BatchEnded(
        "wf", **step, provider="anthropic", batch_id="msgbatch_01", succeeded=290, failed=10
    )
    text(ended)
    state.apply(ended)
    done = "anthropic batch msgbatch_01: ended, 290 ok, 10 errored/expired/canceled"
    assert out.getvalue().splitlines()[-1].strip() == done and done in state.table()
    assert state.steps[1].status == "running" and not state.live_batches()


def test_a_failed_poll_says_so_and_when_it_retries() -> None:
    out = io.StringIO()
    step = {"name": "features", "order": 1, "step_type": "fan-out"}
    TextProgress(out, live=False)(
        ev.BatchProgress(
            "wf", **step, provider="anthropic", batch_id="b1", done=0, total=4, poll_s=150.0,
            error="anthropic: server: Internal server error",
        )
    )  # fmt: skip
    assert out.getvalue().strip() == (
        "anthropic batch b1: 0/4 done, poll failed (anthropic: server: Internal server error), "
        "retrying in 2.5 min"
    )


# --- the Cancel batch button ----------------------------------------------------------------


def test_cancel_batch_button_cancels_a_run_in_this_kernel_and_the_rest_runs_live(
    sqlite_store, slow_batches, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    seed(sqlite_store)
    monkeypatch.setenv("NYXNB_PROGRESS", "widget")  # as in JupyterLab
    progress = WorkflowProgress.start(
        _batch_spec("live"), tenant="nyx", project="BRbase", store=sqlite_store
    )
    view = progress._view
    assert view is not None
    _until(lambda: progress.state.live_batches() and progress.state.live_batches()[0].poll_s)
    progress._flush()
    row = next(r for r in progress.state.steps.values() if r.name == "features")
    assert row.status == "batch" and "darkviolet" in view.rows[row.order][0][6].value
    polling = "anthropic batch msgbatch_fake0001: 0/12 done, polling every 30 s"
    assert polling in view.batches.value
    assert view.cancel.layout.display is None and not view.cancel.disabled
    started = time.monotonic()
    view.cancel.click()
    result = progress.result(timeout=60)
    assert result.ok, result.error
    assert time.monotonic() - started < 15  # the engine saw the cancel, not its 30 s poll
    _assert_canceled_then_live(sqlite_store, slow_batches, result.workflow_id)
    assert any(e.type == "batch_progress" and e.canceling for e in result.events)
    _until(lambda: "cancel requested" in view.note.value)
    assert "cancel requested: anthropic batch msgbatch_fake0001" in view.note.value
    progress.wait()
    progress._flush(final=True)
    ended = (
        "anthropic batch msgbatch_fake0001: ended, 6 ok, 6 errored/expired/canceled; "
        "re-run live at full price"  # what became of the canceled items, and at what price
    )
    assert ended in view.batches.value and ended in progress.summary()
    assert view.cancel.layout.display == "none" and view.cancel.disabled  # nothing live
    assert progress.state.status == "completed"


def test_cancel_batch_from_a_widget_attached_to_a_run_in_another_process(
    sqlite_url: str, slow_batches
) -> None:
    store = nyxnb.open_store(sqlite_url)
    seed(store)
    workflow_id = create_workflow(store, _batch_spec("live"), tenant="nyx", project="BRbase")
    code = (
        "import sys, nyxnb; r = nyxnb.resume(sys.argv[1], store=sys.argv[2]); "
        "sys.exit(0 if r.ok else 1)"
    )
    env = {**os.environ, **slow_batches.env()}
    worker = subprocess.Popen([sys.executable, "-c", code, workflow_id, sqlite_url], env=env)
    try:
        progress = WorkflowProgress.attach(
            store, workflow_id, widget=True, display=False, poll_s=0.1
        )
        view = progress._view
        assert view is not None
        _until(
            lambda: (
                [b for b in progress.state.live_batches() if b.batch_id != SUBMITTING]
                and not view.cancel.disabled
            )
        )
        line = progress.state.live_batches()[0].text()
        assert line.startswith("anthropic batch msgbatch_fake0001: 0/12 done, submitted ")
        row = next(r for r in progress.state.steps.values() if r.name == "features")
        assert row.status == "batch"
        view.cancel.click()
        assert worker.wait(timeout=60) == 0  # it saw the cancel within its 30 s wait
        progress.wait(timeout=30)
    finally:
        worker.kill()
    _assert_canceled_then_live(store, slow_batches, workflow_id)
    assert progress.state.status == "completed" and not progress.state.live_batches()
    store.engine.dispose()


def test_show_and_attach_show_an_open_batch_and_cancel_works_while_paused(
    sqlite_url: str, slow_batches
) -> None:
    store = nyxnb.open_store(sqlite_url)
    seed(store)
    workflow_id = ""
    for event in nyxnb.run_iter(_batch_spec("live"), tenant="nyx", project="BRbase", store=store):
        workflow_id = event.workflow_id
        if event.type == "batch_progress":
            nyxnb.pause(workflow_id, store=store)
    shown = CliRunner().invoke(cli, ["--db", sqlite_url, "show", workflow_id])
    assert shown.exit_code == 0, shown.output
    text = shown.output[shown.output.index("provider batches:") :]
    header, row = text.splitlines()[1:3]
    assert header.lower().split() == [
        "step",
        "provider",
        "batch_id",
        "state",
        "done",
        "age",
        "ended",
    ]
    assert row.split()[:5] == ["features", "anthropic", "msgbatch_fake0001", "open", "0/12"]
    assert row.split()[6] == "s"  # an age in seconds ("3 s" or "0.5 s")
    data = json.loads(
        CliRunner().invoke(cli, ["--db", sqlite_url, "show", workflow_id, "--json"]).output
    )
    [batch] = data["batches"]
    assert batch["live"] and batch["items"] == N_ITEMS and batch["counts"]["processing"] == N_ITEMS
    assert batch["age_s"] >= 0 and batch["provider"] == "anthropic"

    progress = WorkflowProgress.attach(store, workflow_id, widget=True, display=False)
    view = progress._view
    assert view is not None and progress.state.status == "paused"
    assert "anthropic batch msgbatch_fake0001: 0/12 done, submitted" in view.batches.value
    assert not view.cancel.disabled and view.resume.layout.display is None
    progress._cancel_now()  # what a click runs off the kernel's thread
    assert "cancel requested: anthropic batch msgbatch_fake0001" in view.note.value
    assert view.cancel.description == "Canceling" and view.cancel.disabled
    shown = CliRunner().invoke(cli, ["--db", sqlite_url, "show", workflow_id])
    assert "canceling" in shown.output
    result = nyxnb.resume(workflow_id, store=store)  # ingests the finished half, the rest live
    assert result.ok, result.error
    _assert_canceled_then_live(store, slow_batches, workflow_id)
    store.engine.dispose()


def test_a_batchs_age_alone_is_not_a_change_worth_a_new_text_line() -> None:
    """An attached text view compares ``table(ages=False)``: a batch read from the store shows
    "submitted N s ago", which changes on every poll while nothing else does."""
    state = ProgressState()
    state.batches = {"b1": BatchLine("anthropic", "b1", 0, 12, 3, age_s=5.0)}
    before = (state.table(), state.table(ages=False))
    state.batches["b1"].age_s = 9.0
    assert state.table() != before[0]  # what is shown says the new age
    assert state.table(ages=False) == before[1]  # what the change check compares does not
    state.batches["b1"].done = 4
    assert state.table(ages=False) != before[1]  # progress still is a change
