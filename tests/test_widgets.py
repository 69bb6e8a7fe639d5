"""WorkflowProgress: live widgets from events, text outside a frontend, the store as the truth."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import minimal, three_steps

import nyxnb
from nyxnb import events as ev
from nyxnb.engine.workflows import create_workflow
from nyxnb.notebook.inspect import items_df
from nyxnb.notebook.progress import TextProgress
from nyxnb.notebook.widgets import ProgressState, WorkflowProgress, live_frontend
from nyxnb.reports.summary import workflow_summary


def spec(n_items: int = 4, **defaults: Any) -> dict[str, Any]:
    return three_steps("widget-test", n_items, generate=True, **defaults)


@pytest.fixture
def seeded(sqlite_store):
    """Most of the view is backend-agnostic: SQLite; following a run is tested on both."""
    minimal(sqlite_store)
    return sqlite_store


@pytest.fixture
def seeded_any(store):
    minimal(store)
    return store


def latency(ms: float) -> dict[str, dict[str, object]]:
    return {"offline": {"latency_ms": ms}}


# --- choosing the view -------------------------------------------------------------------------


def test_outside_a_frontend_the_view_is_text(monkeypatch: pytest.MonkeyPatch) -> None:
    assert live_frontend() is False  # plain Python: no kernel
    progress = WorkflowProgress(stream=io.StringIO())
    assert progress.widget is False and progress._view is None


@pytest.mark.parametrize(("allow_stdin", "expected"), [(True, True), (False, False)])
def test_a_kernel_request_from_a_live_frontend_gets_widgets(
    monkeypatch: pytest.MonkeyPatch, allow_stdin: bool, expected: bool
) -> None:
    """JupyterLab sends allow_stdin=True; papermill, nbconvert and nbval send False."""
    request = {"content": {"code": "...", "allow_stdin": allow_stdin}}
    kernel = SimpleNamespace(get_parent=lambda channel=None: request)
    monkeypatch.setattr("IPython.get_ipython", lambda: SimpleNamespace(kernel=kernel))
    assert live_frontend() is expected


def test_the_environment_forces_a_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NYXNB_PROGRESS", "widget")
    assert live_frontend() is True
    monkeypatch.setenv("NYXNB_PROGRESS", "text")
    assert live_frontend() is False


# --- events ------------------------------------------------------------------------------------


def test_widget_rows_follow_the_run_and_end_equal_to_the_store(seeded) -> None:
    progress = WorkflowProgress(store=seeded, widget=True, display=False)
    seen_headings: dict[str, str] = {}

    def watch(event: ev.Event) -> None:
        progress(event)
        if isinstance(event, ev.StepStarted) and event.step_type == "implementation-prompt":
            progress.wait()  # the view reads the store on its own thread
            seen_headings[event.name] = progress.state.steps[event.order].heading

    result = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=seeded, on_event=watch)
    assert result.ok
    # the current item's heading also for implementation-prompt steps, while they run
    assert seen_headings == {f"implement_{i + 1:02d}": f"Feature {i}" for i in range(4)}
    progress.wait()  # the last read of the store
    view = progress._view
    assert view is not None and len(view.rows) == len(progress.state.steps) == 8
    for cells, bar, _ in view.rows.values():
        assert "completed" in cells[6].value and bar.value == 1.0
    assert view.pause.disabled  # nothing left to pause
    assert "completed, 8/8 steps" in view.header.value
    attached = WorkflowProgress.attach(
        seeded, result.workflow_id, widget=False, stream=io.StringIO()
    )
    assert progress.state.table(ages=False) == attached.state.table(ages=False)  # clocks aside
    totals = workflow_summary(seeded, result.workflow_id).totals
    assert progress.state.totals()[:2] == (totals.input_tokens, totals.output_tokens)


def test_text_view_stays_concise_on_a_large_fan_out(seeded) -> None:
    out = io.StringIO()
    progress = WorkflowProgress(store=seeded, widget=False, stream=out)
    big = spec(1000)
    big.pop("generate")
    result = nyxnb.run(big, tenant="nyx", project="BRbase", store=seeded, on_event=progress)
    assert result.ok
    lines = out.getvalue().splitlines()
    assert len(lines) < 15  # a line per step, fan-out at most every 2 s: not one per item
    assert any("1000/1000" in line for line in lines)
    assert "completed, 3/3 steps" in progress.summary()


def test_updating_the_widgets_costs_a_fraction_of_the_run(seeded) -> None:
    """1,000 items: the per-item events cost a tiny share of the run; redraws are throttled."""
    progress = WorkflowProgress(store=seeded, widget=True, display=False)
    renders, spent, others = [0], [0.0], [0]
    assert progress._view is not None
    original = progress._view.render

    def counting_render(*args: Any) -> None:
        renders[0] += 1
        original(*args)

    progress._view.render = counting_render  # type: ignore[method-assign]

    def timed(event: ev.Event) -> None:  # CPU time of this thread: other threads not counted
        started = time.thread_time()
        progress(event)
        if isinstance(event, ev.FanOutProgress):
            spent[0] += time.thread_time() - started
        else:
            others[0] += 1

    small = spec(1000)
    small.pop("generate")
    started = time.perf_counter()
    result = nyxnb.run(small, tenant="nyx", project="BRbase", store=seeded, on_event=timed)
    wall = time.perf_counter() - started
    assert result.ok
    # CPU time of the widget per item, far below the engine's own few hundred us per item
    # (a loose bound: thread CPU time, not wall time, so a busy machine does not fail it)
    assert spent[0] / 1000 < 100e-6, spent[0]
    # throttled: one redraw per interval, plus one (and its store refresh) per step/run event
    assert renders[0] <= wall / progress.interval_s + 2 * others[0] + 4, (renders, others)
    assert renders[0] < 100  # not once per item


def test_throttled_updates_are_flushed_by_a_timer() -> None:
    progress = WorkflowProgress(widget=True, display=False)
    progress.interval_s, progress._store_ok = 0.05, False
    wf, step = "wf", {"name": "features", "order": 0, "step_type": "fan-out"}
    progress(ev.WorkflowStarted(wf, name="w", total_steps=1))
    progress(ev.StepStarted(wf, **step, total_items=10))
    for i in range(1, 6):
        progress(ev.FanOutProgress(wf, **step, fan_out_index=i, fan_out_total=10,
                                   fan_out_heading=f"item {i}", completed=i))  # fmt: skip
    time.sleep(0.2)
    assert progress._view is not None
    cells, bar, _ = progress._view.rows[0]
    assert bar.value == 0.5 and ">5/10<" in cells[7].value and ">item 5<" in cells[9].value
    assert "it/s · ETA" in cells[8].value  # tqdm's rate and time left, per fan-out


def test_a_failing_view_never_breaks_the_run(seeded, caplog: pytest.LogCaptureFixture) -> None:
    progress = WorkflowProgress(store=seeded, widget=True, display=False)

    def broken(*_: Any) -> None:
        raise RuntimeError("frontend went away")

    progress._view.render = broken  # type: ignore[union-attr, method-assign]
    with caplog.at_level(logging.ERROR, logger="nyxnb.notebook.widgets"):
        result = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=seeded, on_event=progress)
    assert result.ok
    progress.wait()
    assert len([r for r in caplog.records if "cannot show" in r.message]) == 1


def test_fallbacks_and_failures_show_in_the_state() -> None:
    state = ProgressState()
    wf, step = "wf", {"name": "analysis", "order": 0, "step_type": "llm"}
    state.apply(ev.WorkflowStarted(wf, name="w"))
    state.apply(ev.StepStarted(wf, **step, provider="anthropic"))
    state.apply(ev.ProviderFallback(wf, **step, from_provider="anthropic", to_provider="google",
                                    reason="exhausted"))  # fmt: skip
    state.apply(ev.StepFailed(wf, **step, error="every provider failed"))
    state.apply(ev.WorkflowFailed(wf, name="w", error="step analysis failed"))
    text = state.table()
    assert "analysis: anthropic (exhausted) -> google" in text
    assert "error: step analysis failed" in text and state.steps[0].status == "failed"
    assert state.steps[0].provider == "google"


def test_the_display_bundle_carries_a_text_fallback(seeded) -> None:
    """Where the widget cannot render (no kernel, GitHub), the saved text shows the run."""
    progress = WorkflowProgress(store=seeded, widget=True, display=False)
    nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded, on_event=progress)
    progress.wait()
    bundle = progress._bundle()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert bundle["text/plain"].startswith("widget-test: completed, 6/6 steps")


# --- the store ---------------------------------------------------------------------------------


def test_attach_to_a_finished_run_shows_the_truth(seeded) -> None:
    result = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=seeded)
    out = io.StringIO()
    progress = WorkflowProgress.attach(seeded, result.workflow_id, widget=False, stream=out)
    assert progress._poller is None  # finished: nothing to follow
    assert out.getvalue().startswith("widget-test: completed, 8/8 steps")
    assert "implement_04" in out.getvalue() and "Feature 3" in out.getvalue()
    widget = WorkflowProgress.attach(seeded, result.workflow_id, widget=True, display=False)
    assert widget._view is not None and len(widget._view.rows) == 8


def test_attach_shows_the_store_at_once_not_a_placeholder_to_correct(
    seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attached view is displayed already drawn: its first outputs and the widgets' state
    as they go out are the truth. Right after a kernel restart JupyterLab lost the update
    messages that were to correct a placeholder ("workflow: pending, 0/0 steps") for good."""
    import IPython.display

    result = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=seeded)
    shown: list[str] = []
    updates: list[dict[str, Any]] = []
    headers: list[str] = []

    def display(bundle: dict[str, Any], **_: Any) -> Any:
        shown.append(bundle.get("text/plain") or bundle["text/html"])
        return SimpleNamespace(update=lambda b, **_: updates.append(b))

    original = WorkflowProgress._show

    def show(self: WorkflowProgress) -> None:  # the header widget's value when displayed
        original(self)
        headers.append(self._view.header.value if self._view is not None else "")

    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(WorkflowProgress, "_show", show)
    WorkflowProgress.attach(seeded, result.workflow_id, widget=True)
    assert len(shown) == 2 and not updates  # the widget and its saved copy, drawn once
    assert shown[0].startswith("widget-test: completed, 8/8 steps"), shown[0]
    assert "completed, 8/8 steps" in shown[1] and "completed, 8/8 steps" in headers[0]


def test_attach_follows_a_run_in_another_process(seeded_any, store_url: str) -> None:
    seeded = seeded_any
    workflow_id = create_workflow(seeded, spec(8), tenant="nyx", project="BRbase")
    code = (
        "import sys, nyxnb; r = nyxnb.resume(sys.argv[1], store=sys.argv[2], "
        "provider_options={'offline': {'latency_ms': 150}}); sys.exit(0 if r.ok else 1)"
    )
    worker = subprocess.Popen([sys.executable, "-c", code, workflow_id, store_url])
    try:
        out = io.StringIO()
        progress = WorkflowProgress.attach(
            seeded, workflow_id, widget=False, stream=out, poll_s=0.1, wait=True
        )
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
    assert progress.state.status == "completed"
    text = out.getvalue()
    assert text.count("widget-test:") >= 2  # the table when attached, then as it went
    assert text[text.rindex("widget-test:") :].startswith("widget-test: completed, 12/12 steps")


def test_pause_button_pauses_a_background_run_and_start_resumes_it(
    seeded, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NYXNB_PROGRESS", "widget")  # as in JupyterLab
    progress = WorkflowProgress.start(
        spec(12, concurrency=1), tenant="nyx", project="BRbase", store=seeded,
        provider_options=latency(150),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = next((r for r in progress.state.steps.values() if r.name == "features"), None)
        if row is not None and row.items_done >= 1:
            break
        time.sleep(0.02)
    assert progress._view is not None and not progress._view.pause.disabled
    progress._view.pause.click()
    first = progress.result(timeout=30)
    assert first.status == "paused" and progress._view.pause.disabled
    assert "paused" in progress._view.header.value
    view = progress._view
    assert view.resume.layout.display is None and not view.resume.disabled  # Resume shows
    assert view.pause.layout.display == "none"
    view.resume.click()  # resumes the same workflow in the background, this view follows
    assert view.resume.description == "Resuming" and view.resume.disabled
    resumed = progress.result(timeout=60)
    assert resumed.ok and resumed.workflow_id == first.workflow_id
    assert progress.state.status == "completed" and view.resume.layout.display == "none"
    assert view.pause.layout.display is None and view.pause.disabled  # nothing left to pause


def test_pause_clicked_after_the_run_ended_does_nothing_and_raises_nothing(seeded) -> None:
    """The issue: a queued click after a foreground run used to raise RunError in the log."""
    progress = WorkflowProgress(store=seeded, widget=True, display=False)
    result = nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded, on_event=progress)
    progress.wait()
    view = progress._view
    assert result.ok and view is not None and view.pause.disabled
    progress._on_pause(view.pause)  # what a late click does (a disabled button sends nothing)
    assert view.pause.description == "Pause" and view.pause.disabled
    assert "nothing to pause: the workflow is completed" in view.note.value


def test_pausing_state_shows_until_the_engine_stops(seeded) -> None:
    progress = WorkflowProgress(store=seeded, widget=True, display=False)
    view = progress._view
    assert view is not None
    progress(ev.WorkflowStarted("wf", name="w", total_steps=3))
    assert not view.pause.disabled and view.pause.description == "Pause"
    view.pausing = True  # as _on_pause sets it once the store took the request
    view.controls("running")
    assert view.pause.disabled and view.pause.description == "Pausing"
    progress(ev.WorkflowPaused("wf", name="w"))
    assert progress.state.status == "paused"
    assert view.pause.layout.display == "none" and view.resume.layout.display is None


def test_arun_awaits_the_run_so_the_kernel_stays_free(seeded) -> None:
    import asyncio

    async def main() -> tuple[WorkflowProgress, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())  # what ipykernel does meanwhile: serve messages
        progress = await WorkflowProgress.arun(
            spec(4), tenant="nyx", project="BRbase", store=seeded, provider_options=latency(40)
        )
        task.cancel()
        return progress, ticks

    progress, ticks = asyncio.run(main())
    assert progress.result().ok and ticks >= 5  # the loop ran while the workflow did


def test_the_saved_form_says_the_widget_is_not_live(seeded) -> None:
    progress = WorkflowProgress(store=seeded, widget=True, display=False)
    nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded, on_event=progress)
    progress.wait()
    bundle, static = progress._bundle(), progress._static_bundle()
    assert "kernel restarted: re-run the attach cell" in static["text/html"]
    assert "completed, 6/6 steps" in static["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/html" not in bundle


def test_attach_without_an_id_follows_the_latest_workflow(seeded) -> None:
    nyxnb.run(spec(1), tenant="nyx", project="BRbase", store=seeded)
    last = nyxnb.run(spec(2), tenant="nyx", project="BRbase", store=seeded)
    attached = WorkflowProgress.attach(seeded, tenant="nyx", project="BRbase",
                                       widget=False, stream=io.StringIO())  # fmt: skip
    assert attached.state.workflow_id == last.workflow_id
    with pytest.raises(nyxnb.NyxError, match="no workflow in nyx Nowhere"):
        WorkflowProgress.attach(seeded, tenant="nyx", project="Nowhere", widget=False)


# --- progress tells the truth ----------------------------------------------------------------


def test_the_step_total_is_known_from_the_first_event(seeded) -> None:
    progress = WorkflowProgress(store=seeded, widget=True, display=False)
    headlines: list[str] = []

    def watch(event: ev.Event) -> None:
        progress(event)
        headlines.append(progress.state.headline().split(",")[1].split(" · ")[0])

    nyxnb.run(spec(4), tenant="nyx", project="BRbase", store=seeded, on_event=watch)
    assert {h.split("/")[1] for h in headlines} == {"8 steps"}  # never 1/1, 3/5, ...


def test_text_and_widget_name_who_answered_and_mark_cached_answers(seeded) -> None:
    cached_spec = spec(2, cache=True)
    nyxnb.run(cached_spec, tenant="nyx", project="BRbase", store=seeded)
    out = io.StringIO()
    text = WorkflowProgress(store=seeded, widget=False, stream=out)
    widget = WorkflowProgress(store=seeded, widget=True, display=False)
    seen: list[ev.Event] = []

    def both(event: ev.Event) -> None:
        seen.append(event)
        text(event)
        widget(event)

    again = nyxnb.run(cached_spec, tenant="nyx", project="BRbase", store=seeded, on_event=both)
    assert again.ok
    done = [e for e in seen if isinstance(e, ev.StepCompleted) and e.step_type == "llm"]
    assert done and all(e.model == "offline-1" and e.cached for e in done)
    assert "analysis (llm, Athena, offline offline-1, cached) done" in out.getvalue()
    widget.wait()
    row = next(r for r in widget.state.steps.values() if r.name == "analysis")
    assert row.cells()[4:6] == ("offline, cached", "offline-1")
    fan = next(r for r in widget.state.steps.values() if r.name == "features")
    assert fan.cached and fan.cells()[4] == "offline, cached"


def test_text_progress_names_the_fallback_that_answered() -> None:
    out = io.StringIO()
    text = TextProgress(out)
    step = {"name": "analysis", "order": 0, "step_type": "llm"}
    text(ev.WorkflowStarted("wf", name="w", total_steps=5))
    text(ev.StepStarted("wf", **step, persona="Athena", provider="anthropic"))
    text(ev.StepCompleted("wf", **step, provider="google", model="gemini-2.5-flash"))
    assert out.getvalue().splitlines()[-1] == (
        "  #0 analysis (llm, Athena, google gemini-2.5-flash (fallback from anthropic)) done"
    )


def test_result_without_a_background_run_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no background run"):
        WorkflowProgress(stream=io.StringIO()).result()


def test_text_lines_price_and_count_as_the_widget_does() -> None:
    """The end line and step lines: "in / out" tokens, and "—" where nothing was priced."""
    out = io.StringIO()
    text = TextProgress(out)
    step = {"name": "analysis", "order": 0, "step_type": "llm"}
    text(ev.WorkflowStarted("wf", name="w", total_steps=1))
    text(ev.StepStarted("wf", **step, persona="Athena", provider="offline"))
    text(ev.StepCompleted("wf", **step, provider="offline", model="offline-1",
                          input_tokens=9465, output_tokens=1524))  # fmt: skip
    text(ev.WorkflowCompleted("wf", name="w", seconds=4.2, input_tokens=9465, output_tokens=1524))
    lines = out.getvalue().splitlines()
    assert lines[-2].endswith("done · 9,465 in / 1,524 out tokens · —"), lines[-2]
    assert lines[-1] == "completed in 0:04: 9,465 in / 1,524 out tokens · —"
    state = ProgressState()  # the widget's header says the same
    state.apply(ev.WorkflowStarted("wf", name="w", total_steps=1))
    state.apply(ev.WorkflowCompleted("wf", name="w", input_tokens=9465, output_tokens=1524))
    assert "9,465 in / 1,524 out tokens · —" in state.headline()
    priced = io.StringIO()
    TextProgress(priced)(ev.WorkflowCompleted("wf", name="w", seconds=75, input_tokens=1,
                                             output_tokens=2, cost_usd=0.0123))  # fmt: skip
    assert priced.getvalue() == "completed in 1:15: 1 in / 2 out tokens · $0.0123\n"


def test_items_are_numbered_from_0_as_in_the_store(seeded) -> None:
    """Text lines, the widget and the store (``step_items.idx``, ``items_df``) agree on items."""
    out = io.StringIO()
    text = TextProgress(out, every_s=0.0)
    widget = ProgressState()
    seen: list[ev.Event] = []

    def both(event: ev.Event) -> None:
        seen.append(event)
        text(event)
        widget.apply(event)

    one = spec(3)
    one.pop("generate")
    result = nyxnb.run(one, tenant="nyx", project="BRbase", store=seeded, on_event=both)
    assert result.ok
    items = items_df(seeded, result.workflow_id)
    by_idx = dict(zip(items["idx"], items["heading"], strict=True))
    assert sorted(by_idx) == [0, 1, 2]
    lines = [line for line in out.getvalue().splitlines() if "  item " in line]
    assert len(lines) == 3
    for line in lines:  # "#####... 2/3  item 1 <heading of idx 1> (offline offline-1)"
        idx = int(line.split("  item ")[1].split()[0])
        assert f"item {idx} {by_idx[idx][:40]}" in line, (line, by_idx)
    fan = [e for e in seen if isinstance(e, ev.FanOutProgress)]
    assert sorted(e.item_idx for e in fan) == [0, 1, 2]
    wf, step = "wf", {"name": "features", "order": 1, "step_type": "fan-out"}
    widget.apply(ev.ProviderFallback(wf, **step, from_provider="anthropic", to_provider="google",
                                     reason="exhausted", item_index=2))  # fmt: skip
    widget.apply(ev.Generating(wf, **step, provider="google", tokens=5, item_index=2))
    assert widget.fallbacks[-1].startswith("features item 2:")
    assert widget.steps[1].heading.startswith("item 2: google writing")
    text(ev.ProviderFallback(wf, **step, from_provider="anthropic", to_provider="google",
                             reason="exhausted", item_index=2))  # fmt: skip
    assert out.getvalue().splitlines()[-1].startswith("      fallback item 2: anthropic")
