"""What a researcher sees after a crash, a pause or an interrupt (issue 25, items 1-4).

A dead run (lease expired, nobody runs it) reads ``interrupted`` in every view, a pause ends the
awaited cell with one line (so Run All stops), the stop button pauses and keeps what was in
flight, and every view of one workflow shows the same state.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import minimal, three_steps

from nyxnb.cli.main import cli
from nyxnb.errors import WorkflowStopped
from nyxnb.notebook.widgets import WorkflowProgress
from nyxnb.reports.summary import list_workflows, workflow_summary
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep, utcnow

NOTE = re.compile(r"interrupted: no runner since \d\d:\d\d:\d\d; resume with `nyxnb resume \S+`")


@pytest.fixture
def seeded(sqlite_store):
    minimal(sqlite_store)
    return sqlite_store


def spec(n_items: int = 6, **defaults: Any) -> dict[str, Any]:
    return three_steps("truth-test", n_items, generate=False, **defaults)


def latency(ms: float) -> dict[str, dict[str, object]]:
    return {"offline": {"latency_ms": ms}}


def _kill_the_runner(store, workflow_id: str, *, expired_s: float = 60.0) -> None:
    """What a killed kernel leaves behind: status running, a lease nobody renews."""
    with store.session() as s:
        wf = s.get_one(Workflow, workflow_id)
        wf.status, wf.lease_owner = "running", "gone-host:4242:dead"
        wf.lease_expires_at = utcnow() - timedelta(seconds=expired_s)


def _paused_run(store) -> str:
    """A workflow paused in its fan-out (some items done)."""
    progress = WorkflowProgress.start(
        spec(8, concurrency=1), tenant="nyx", project="BRbase", store=store, widget=False,
        provider_options=latency(60),
    )  # fmt: skip
    _until_items(progress, 2)
    progress.pause()
    assert progress.result(timeout=30).status == "paused"
    return progress.state.workflow_id


def _until_items(progress: WorkflowProgress, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = next((r for r in progress.state.steps.values() if r.name == "features"), None)
        if row is not None and row.items_done >= n:
            return
        time.sleep(0.02)
    raise AssertionError("the fan-out did not start")


# --- item 1: a dead run is called dead ----------------------------------------------------------


def test_a_run_whose_lease_expired_reads_interrupted_in_every_view(seeded) -> None:
    workflow_id = _paused_run(seeded)
    _kill_the_runner(seeded, workflow_id)

    summary = workflow_summary(seeded, workflow_id)
    assert summary.status == "running" and summary.shown_status == "interrupted"
    assert NOTE.fullmatch(summary.note) and workflow_id in summary.note
    listed = next(r for r in list_workflows(seeded) if r.id == workflow_id)
    assert listed.status == "interrupted" and listed.stored_status == "running"

    url = str(seeded.engine.url)
    shown = CliRunner().invoke(cli, ["--db", url, "show", workflow_id]).output
    assert "status: interrupted (stored: running)" in shown and NOTE.search(shown)
    data = json.loads(CliRunner().invoke(cli, ["--db", url, "show", workflow_id, "--json"]).output)
    assert data["status"] == "interrupted" and data["stored_status"] == "running"
    assert NOTE.fullmatch(data["note"])
    listing = CliRunner().invoke(cli, ["--db", url, "list"]).output
    assert "interrupted" in listing and " running " not in listing and NOTE.search(listing)

    out = io.StringIO()
    text = WorkflowProgress.attach(seeded, workflow_id, widget=False, stream=out, wait=True)
    assert text.state.status == "interrupted" and NOTE.search(out.getvalue())
    assert "running" not in out.getvalue().splitlines()[0]
    assert text._poller is None  # nothing to follow: attach stops at once

    widget = WorkflowProgress.attach(seeded, workflow_id, widget=True, display=False)
    view = widget._view
    assert view is not None and "interrupted" in view.header.value
    assert view.pause.layout.display == "none" and view.resume.layout.display is None
    features = next(r for r in widget.state.steps.values() if r.name == "features")
    assert features.status == "interrupted"  # a half-done fan-out says why it stopped


def test_a_live_or_late_lease_still_reads_running(seeded) -> None:
    workflow_id = _paused_run(seeded)
    _kill_the_runner(seeded, workflow_id, expired_s=-30)  # renewed 30 s ahead: someone runs it
    summary = workflow_summary(seeded, workflow_id)
    assert summary.shown_status == "running" and summary.note == ""
    _kill_the_runner(seeded, workflow_id, expired_s=3)  # a renewal late on a busy store
    assert workflow_summary(seeded, workflow_id).shown_status == "running"


def test_a_killed_runner_of_this_host_reads_interrupted_at_once_in_every_view(seeded) -> None:
    """Its lease is still fresh (it renewed a second ago), but its process is gone: a restarted
    kernel's run. The views need not wait ~16 s (lease TTL + grace); another host's still do."""
    workflow_id = _paused_run(seeded)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process of this host that has ended
    _kill_the_runner(seeded, workflow_id, expired_s=-120)  # fresh for two minutes more
    with seeded.session() as s:
        s.get_one(Workflow, workflow_id).lease_owner = f"{socket.gethostname()}:{gone.pid}:x"
    summary = workflow_summary(seeded, workflow_id)
    assert summary.shown_status == "interrupted" and NOTE.fullmatch(summary.note)
    url = str(seeded.engine.url)
    shown = CliRunner().invoke(cli, ["--db", url, "show", workflow_id]).output
    assert "status: interrupted (stored: running)" in shown and NOTE.search(shown)
    listed = next(r for r in list_workflows(seeded) if r.id == workflow_id)
    assert listed.status == "interrupted"
    with seeded.session() as s:  # the same fresh lease held on another host: running until expiry
        s.get_one(Workflow, workflow_id).lease_owner = f"elsewhere:{gone.pid}:x"
    assert workflow_summary(seeded, workflow_id).shown_status == "running"
    with seeded.session() as s:
        s.get_one(Workflow, workflow_id).lease_owner = f"{socket.gethostname()}:{gone.pid}:x"
    text = WorkflowProgress.attach(
        seeded, workflow_id, widget=False, stream=io.StringIO(), wait=False
    )
    text.stop()
    assert text.state.status == "interrupted" and NOTE.search(text.state.headline())
    widget = WorkflowProgress.attach(seeded, workflow_id, widget=True, display=False)
    assert widget._view is not None and "interrupted" in widget._view.header.value
    assert widget._view.resume.layout.display is None  # a Resume button, at once
    with seeded.session() as s:  # the same lease held by a live process here (init): running
        s.get_one(Workflow, workflow_id).lease_owner = f"{socket.gethostname()}:1:x"
    alive = WorkflowProgress.attach(
        seeded, workflow_id, widget=False, stream=io.StringIO(), wait=False
    )
    assert alive.state.status == "running"
    alive.stop()


def test_resume_from_an_interrupted_widget_finishes_the_run(seeded) -> None:
    workflow_id = _paused_run(seeded)
    _kill_the_runner(seeded, workflow_id)
    widget = WorkflowProgress.attach(seeded, workflow_id, widget=True, display=False)
    assert widget._view is not None
    widget._view.resume.click()
    assert widget.result(timeout=60).ok and widget.state.status == "completed"


# --- items 2-4: interrupt pauses, a pause is one line, one truth ---------------------------------


async def _arun_until(store, n_items: int, then: str) -> WorkflowStopped | None:
    """``await arun(...)`` as a cell does; after ``n_items`` items, pause or interrupt it."""
    cell = asyncio.ensure_future(
        WorkflowProgress.arun(
            spec(10, concurrency=2),
            tenant="nyx",
            project="BRbase",
            store=store,
            widget=True,
            display=False,
            provider_options=latency(80),
        )  # fmt: skip
    )
    while True:
        await asyncio.sleep(0.02)
        progress = next(iter(_views(store)), None)
        row = progress and next(
            (r for r in progress.state.steps.values() if r.name == "features"), None
        )
        if row is not None and row.items_done >= n_items:
            break
    if then == "interrupt":
        cell.cancel()  # what ipykernel does on SIGINT (the toolbar's stop button)
    else:
        progress.pause()  # what the Pause button does
    try:
        await cell
    except WorkflowStopped as stopped:
        return stopped
    return None


def _views(store) -> list[WorkflowProgress]:
    """The views running a workflow of ``store`` (other tests' runs may still be winding down)."""
    from nyxnb.notebook import widgets

    views = [v for vs in widgets._VIEWS.values() for v in vs]
    return [v for v in views if v.store is store and v._runs_it()]


def test_a_pause_ends_the_awaited_cell_with_one_line(seeded) -> None:
    stopped = asyncio.run(_arun_until(seeded, 2, "pause"))
    assert isinstance(stopped, WorkflowStopped) and stopped.status == "paused"
    (line,) = stopped._render_traceback_()  # what IPython, nbval and papermill show: one line
    assert re.fullmatch(
        r"paused at step 1 \(features, \d+/10 items\); resume with `nyxnb resume \S+`", line
    ), line


def test_the_stop_button_pauses_the_run_and_keeps_the_answers_in_flight(seeded) -> None:
    stopped = asyncio.run(_arun_until(seeded, 2, "interrupt"))
    assert isinstance(stopped, WorkflowStopped), "an interrupt must pause, not re-raise"
    (line,) = stopped._render_traceback_()
    assert line.startswith("interrupted (■): paused at step 1 (features")
    assert line.endswith("the answers in flight were kept")
    with seeded.session() as s:
        assert s.get_one(Workflow, stopped.workflow_id).status == "paused"
        step = s.query(WorkflowStep).filter_by(workflow_id=stopped.workflow_id, order=1).one()
        kept = s.query(StepItem).filter_by(step_id=step.id, status="completed").count()
        paid = s.query(LlmCall).filter_by(step_id=step.id, outcome="ok").count()
    assert 0 < kept < 10 and kept == paid  # every answer paid for was kept


def test_an_interrupt_after_the_run_completed_is_one_line_not_a_traceback(
    seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = WorkflowProgress.start(spec(2), tenant="nyx", project="BRbase", store=seeded,
                                      widget=False, stream=io.StringIO())  # fmt: skip
    assert progress.result(timeout=30).ok
    progress._outcome(interrupted=True)  # raises nothing
    assert "completed before the interrupt: nothing to pause" in capsys.readouterr().out


def test_every_view_of_a_workflow_shows_the_same_state(seeded) -> None:
    workflow_id = _paused_run(seeded)
    old = WorkflowProgress.attach(seeded, workflow_id, widget=True, display=False)
    new = WorkflowProgress.attach(seeded, workflow_id, widget=True, display=False)
    assert old._view is not None and new._view is not None
    assert old.state.status == new.state.status == "paused"
    new._view.resume.click()  # the other view resumes it ...
    assert new.result(timeout=60).ok
    deadline = time.monotonic() + 30
    while old.state.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    # ... and the old one follows: same state, no live Resume left behind
    assert old.state.status == "completed" and old._view.resume.layout.display == "none"
    assert old.state.table(ages=False) == new.state.table(ages=False)


def test_a_paused_fan_out_says_paused_not_pending(seeded) -> None:
    workflow_id = _paused_run(seeded)
    attached = WorkflowProgress.attach(seeded, workflow_id, widget=False, stream=io.StringIO())
    features = next(r for r in attached.state.steps.values() if r.name == "features")
    assert features.status == "paused" and 0 < features.items_done < features.items_total
    assert "paused at step 1 (features" in attached.state.headline()


def test_a_stopped_run_shows_one_line_in_a_kernel_and_run_all_stops_there() -> None:
    """IPython shows ``_render_traceback_`` (no traceback); the next cell does not run."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    line = "paused at step 1 (features, 4/13 items); resume with `nyxnb resume WF`"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from nyxnb.errors import WorkflowStopped\n"
            f"raise WorkflowStopped('WF', 'paused', {line!r})"
        ),
        nbformat.v4.new_code_cell("print('the next cell ran')"),
    ]
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    (error,) = nb.cells[0].outputs
    assert error.output_type == "error" and error.ename == "WorkflowStopped"
    assert error.traceback == [line]  # the one line, no frames
    assert not nb.cells[1].outputs  # Run All stopped at the paused run
