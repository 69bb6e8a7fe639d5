"""Notebooks 01 and 06 in a real browser: JupyterLab 4 driven by Debian's chromium (selenium).

What a researcher does, checked against the store: open the notebook, Run All, see the progress
render as a widget (not text) and update, press Pause during the run and see the workflow paused
in the store and the cell end in one line (Run All stops there), press Resume and see it
complete, restart the kernel (the old widget turns into an honest static copy), run the attach
cell (one widget). Press the toolbar's stop button (■) during a run: it pauses, in one line.
Restart the kernel during a run: the attach cell says the run is *interrupted* (no runner) and
its Resume finishes it. Notebook 06's compare view is left-aligned as the browser computes it,
whatever JupyterLab's table style says. A screenshot of each state goes to ``$CI_ARTIFACTS``
(default ``tests/artifacts/``, gitignored); ``widget.png`` there is the README's picture
(``notebooks/_render_readme_png.py`` copies it to ``data/widget.png``).

Skips, saying why, when chromium, chromedriver, selenium or JupyterLab is missing (``.ci/run``
installs them all).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("NYXNB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NYXNB_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("CI_ARTIFACTS") or ROOT / "tests" / "artifacts")
LATENCY_MS = 800  # of each offline call in notebook 01 here (the notebook says 250)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-extensions", "--disable-sync",
         "--no-first-run", "--window-size=1500,1300")  # fmt: skip


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not installed (apt-get install chromium chromium-driver)"
    if not Path(CHROMEDRIVER).is_file():
        return f"{CHROMEDRIVER} not installed (apt-get install chromium-driver)"
    for module in ("selenium", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module} not installed (pip install -e '.[dev]')"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
    pytest.mark.timeout(240),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the page is still changing
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project (notebook 01, data/): JupyterLab saves into it, never the repo."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'browser-test'\n")
    shutil.copytree(ROOT / "data", tmp_path / "data", ignore=shutil.ignore_patterns("*.db*"))
    (tmp_path / "notebooks").mkdir()
    for name in ("01_run_workflow.ipynb", "05_resume_and_recover.ipynb",
                 "06_iterate_and_compare.ipynb"):  # fmt: skip
        shutil.copy(ROOT / "notebooks" / name, tmp_path / "notebooks")
    # the run lasts ~15 s, not ~4 s: on a loaded machine a click meant for the running
    # workflow (Pause, ■, a restart mid-run) must not arrive after it ended
    first = tmp_path / "notebooks" / "01_run_workflow.ipynb"
    source = first.read_text()
    assert "offline_latency_ms = 250 " in source
    first.write_text(
        source.replace("offline_latency_ms = 250 ", f"offline_latency_ms = {LATENCY_MS} ")
    )
    return tmp_path


@pytest.fixture
def lab(project: Path) -> Iterator[str]:
    """A JupyterLab server on loopback, no token, the app exposed to scripts as jupyterapp."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_",
           "GEMINI_", "GOOGLE_", "NYXNB_"))}  # fmt: skip
    news = project / ".settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env |= {
        "NYXNB_DB_URL": f"sqlite:///{project}/browser.db",
        "JUPYTER_CONFIG_DIR": str(project / ".jupyter"),
        "JUPYTERLAB_WORKSPACES_DIR": str(project / ".ws"),
    }
    log = (project / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--allow-root", "--IdentityProvider.token=", "--ServerApp.disable_check_xsrf=True",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         f"--LabApp.user_settings_dir={news.parent.parent}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--ServerApp.root_dir={project}"],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def listening() -> bool:
            if server.poll() is not None:
                raise RuntimeError((project / "lab.log").read_text()[-2000:])
            return urllib.request.urlopen(f"{url}/api").status == 200

        try:
            _until("JupyterLab to listen", listening, timeout=60, every=0.3)
        except AssertionError:
            pytest.fail("JupyterLab did not start:\n" + (project / "lab.log").read_text()[-2000:])
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The notebook panel, through JupyterLab's own commands and the widget's DOM."""

    def __init__(self, driver: Any, db_url: str) -> None:
        self.d, self.db = driver, create_engine(db_url)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def js(self, script: str, *args: Any) -> Any:
        return self.d.execute_script(script, *args)

    def kernel_status(self) -> str | None:
        return self.js(
            "const w = window.jupyterapp.shell.currentWidget;"
            "const k = w && w.sessionContext && w.sessionContext.session"
            " && w.sessionContext.session.kernel; return k ? k.status : null;"
        )

    def command(self, name: str) -> None:
        self.js(f"window.jupyterapp.commands.execute({name!r});")

    def run_cell(self, index: int) -> None:
        self.js(
            "const nb = window.jupyterapp.shell.currentWidget.content;"
            f"nb.activeCellIndex = {index}; nb.deselectAll();"
        )
        self.command("notebook:run-cell")

    def cell_index(self, tag: str) -> int:
        return int(
            self.js(
                "const cells = window.jupyterapp.shell.currentWidget.content.model.cells;"
                "for (let i = 0; i < cells.length; i++) {"
                "  const tags = cells.get(i).getMetadata('tags') || [];"
                f"  if (tags.includes({tag!r})) return i; }} return -1;"
            )
        )

    def outputs(self, index: int) -> list[dict[str, Any]]:
        """The outputs of cell ``index`` as the notebook model holds them (nbformat JSON)."""
        return list(
            self.js(
                "const nb = window.jupyterapp.shell.currentWidget.content;"
                f"return nb.model.cells.get({index}).toJSON().outputs || [];"
            )
        )

    def finished(self, index: int) -> bool:
        """Cell ``index`` ran to its end: it has an execution count and the kernel is idle."""
        count = self.js(
            "const nb = window.jupyterapp.shell.currentWidget.content;"
            f"return nb.model.cells.get({index}).toJSON().execution_count;"
        )
        return count is not None and self.kernel_status() == "idle"

    def error_of(self, index: int) -> dict[str, Any] | None:
        return next((o for o in self.outputs(index) if o.get("output_type") == "error"), None)

    def interrupt(self) -> None:
        """Press the notebook toolbar's stop button (■), as a researcher does."""
        found = self.d.find_elements(
            "css selector", ".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']"
        )
        if found:
            found[0].click()
        else:  # the button's markup changed: the same request through the session
            self.js("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                    ".interrupt();")  # fmt: skip

    def restart(self) -> None:
        self.js("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart();")
        _until("the restarted kernel", lambda: self.kernel_status() == "idle", timeout=60,
               every=0.3)  # fmt: skip

    def visible_texts(self, css: str) -> list[str]:
        """The text of every displayed element matching ``css``, read at once (no stale ones)."""
        return list(
            self.js(
                "return [...document.querySelectorAll(arguments[0])]"
                ".filter(e => e.offsetParent !== null).map(e => e.textContent);",
                css,
            )
        )

    def shown(self, css: str, widget: Any = None) -> bool:
        """An element of the (last) widget is displayed."""
        found = (widget or self.widgets()[-1]).find_elements("css selector", css)
        return bool(found) and found[0].is_displayed()

    def widgets(self) -> list[Any]:
        return self.d.find_elements("css selector", ".nyxnb-progress")

    def header(self) -> str:
        return str(self.widgets()[-1].find_element("css selector", ".nyxnb-header").text)

    def button(self, kind: str) -> Any:
        found = self.widgets()[-1].find_elements("css selector", f"button.nyxnb-{kind}")
        return found[0] if found and found[0].is_displayed() else None

    def click(self, kind: str) -> None:
        """Click Pause or Resume; the view may be redrawn between finding and clicking it."""

        def clicked() -> bool:
            button = self.button(kind)
            if button is None or not button.is_enabled():
                return False
            button.click()
            return True

        _until(f"a {kind} button to click", clicked, timeout=30)

    def status(self) -> str | None:
        with self.db.connect() as conn:
            return conn.scalar(text("SELECT status FROM workflows ORDER BY created_at DESC"))

    def shot(self, name: str, widget_only: bool = False) -> None:
        path = str(ARTIFACTS / f"{name}.png")

        def taken() -> bool:  # the widget may be redrawn meanwhile: find it again
            widget = self.widgets()[-1] if self.widgets() else None
            if widget is not None:  # the view follows the widget, not the last cell
                self.js("arguments[0].scrollIntoView({block: 'start'});", widget)
            if widget_only and widget is not None:
                return bool(widget.screenshot(path))
            return bool(self.d.save_screenshot(path))

        _until(f"screenshot {name}", taken, timeout=20)


def test_notebook_01_in_jupyterlab_pause_resume_restart_attach(lab, browser, project) -> None:
    page = Page(browser, f"sqlite:///{project}/browser.db")
    browser.get(f"{lab}/lab/tree/notebooks/01_run_workflow.ipynb?reset")
    _until("the kernel", lambda: page.kernel_status() == "idle", timeout=90, every=0.3)
    page.command("notebook:run-all-cells")

    # a widget, not text, and it updates while the run goes on
    _until("the progress widget", lambda: page.widgets() and "running" in page.header())
    first = page.header()
    _until("the widget to update", lambda: page.header() != first and "running" in page.header())
    assert "/19 steps" in first  # the total is known from the start
    page.shot("running")
    page.shot("widget", widget_only=True)  # the README's picture

    # Pause during the (foreground) run: the click is handled while the cell runs
    page.click("pause")

    def pausing() -> str | None:
        button = page.button("pause")
        if button is not None and button.text.strip() == "Pausing" and not button.is_enabled():
            return "pausing"
        return "paused" if page.status() == "paused" else None

    if _until("Pausing (or already paused)", pausing, timeout=15, every=0.02) == "pausing":
        page.shot("pausing", widget_only=True)
    _until("paused in the store", lambda: page.status() == "paused", timeout=30)
    _until("a Resume button", lambda: page.button("resume") is not None, timeout=20)
    assert "paused" in page.header() and page.button("pause") is None
    # the pause ends the cell in one line, no traceback, and Run All stops there
    run = page.cell_index("run")
    error = _until("the run cell's one line", lambda: page.error_of(run), timeout=30)
    assert error["ename"] == "WorkflowStopped" and len(error["traceback"]) == 1, error
    assert error["traceback"][0].startswith("paused at step "), error
    assert not page.outputs(run + 2)  # the step table cell did not run on a half-done workflow
    page.shot("paused")

    # Resume continues the same workflow in the background, to the end
    _until("the kernel to finish the cells", lambda: page.kernel_status() == "idle", timeout=60)
    page.click("resume")
    _until("running again", lambda: page.status() == "running" or page.status() == "completed")
    _until("completed", lambda: "completed" in page.header(), timeout=90)
    assert page.status() == "completed" and "19/19 steps" in page.header()
    _until("Pause disabled", lambda: not page.button("pause").is_enabled(), timeout=10)
    page.shot("completed")

    # restart the kernel: the old widget is a static copy that says so, without dead buttons
    page.restart()
    _until("the stale widget's note", lambda: page.shown(".nyxnb-stale"), timeout=20)
    assert not page.shown(".nyxnb-live") and not page.button("pause")
    page.shot("restarted")
    before = len(page.widgets())
    attach = page.cell_index("attach")
    page.run_cell(attach)
    _until("the attach cell to finish", lambda: page.finished(attach), timeout=60)
    # the attached view goes out drawn from the store: its outputs, as the notebook holds
    # them, are the truth at once; the widget shows the same once rendered (no correction
    # has to arrive later: after a restart JupyterLab lost such updates, and the widget
    # said "workflow: pending, 0/0 steps" for good)
    assert page.error_of(attach) is None, page.error_of(attach)
    saved = [o["data"] for o in page.outputs(attach) if "data" in o]
    assert len(saved) == 2, saved  # the widget (with its text form) and its static copy
    assert saved[0]["text/plain"].startswith("brbase-plan: completed, 19/19 steps"), saved
    assert "brbase-plan: completed, 19/19 steps" in saved[1]["text/html"], saved
    try:
        _until("the attached widget", lambda: len(page.widgets()) > before, timeout=20)
        _until("the attached state", lambda: "completed, 19/19 steps" in page.header(), timeout=10)
    finally:
        page.shot("attached")
    assert len(page.widgets()) == before + 1  # attach(...) as the cell's last line: drawn once
    assert not page.shown(".nyxnb-stale")
    assert not page.visible_texts(".nyxnb-progress-static")  # widgets render: copies hide

    # reload the page: the first run's widget has no model (its kernel is gone); its static
    # copy shows instead of "Error displaying widget: model not found"
    page.command("docmanager:save")
    saved = "return !window.jupyterapp.shell.currentWidget.context.model.dirty;"
    _until("the notebook saved", lambda: page.js(saved), timeout=20)
    browser.refresh()
    _until("the kernel", lambda: page.kernel_status() == "idle", timeout=90, every=0.3)

    def static_copy() -> bool:
        return any("completed, 19/19" in t for t in page.visible_texts(".nyxnb-progress-static"))

    try:
        _until("the static copy", static_copy, timeout=30)
    finally:
        page.shot("reloaded")
    outputs = page.visible_texts(".jp-OutputArea-output")
    assert not [t for t in outputs if "Error displaying widget" in t]


def test_stop_button_pauses_and_a_restart_mid_run_reads_interrupted(lab, browser, project) -> None:
    page = Page(browser, f"sqlite:///{project}/browser.db")
    browser.get(f"{lab}/lab/tree/notebooks/01_run_workflow.ipynb?reset")
    _until("the kernel", lambda: page.kernel_status() == "idle", timeout=90, every=0.3)
    page.command("notebook:run-all-cells")
    _until("the progress widget", lambda: page.widgets() and "running" in page.header())
    _until("a few steps done", lambda: re.search(r"running, [2-9]/19", page.header()))

    # the toolbar's stop button: the awaited run pauses; the cell ends in one line
    page.interrupt()
    run = page.cell_index("run")
    error = _until("the run cell's one line", lambda: page.error_of(run), timeout=60)
    assert page.status() == "paused", error
    assert error["ename"] == "WorkflowStopped" and len(error["traceback"]) == 1, error
    assert error["traceback"][0].startswith("interrupted (■): paused at step "), error
    assert not page.outputs(run + 2)  # Run All stopped at the paused run
    _until("a Resume button", lambda: page.button("resume") is not None, timeout=20)
    page.shot("interrupted")

    # Resume, then restart the kernel mid-run: nothing runs it any more
    page.click("resume")
    _until("running again", lambda: page.status() == "running" and "running" in page.header())
    page.restart()
    assert page.status() == "running"  # the stored status stays; no view may say so
    _until("the stale widget's note", lambda: page.shown(".nyxnb-stale"), timeout=20)
    before = len(page.widgets())
    attach = page.cell_index("attach")
    page.run_cell(attach)
    _until("the attach cell to finish", lambda: page.finished(attach), timeout=60)
    # its runner (the old kernel) is a gone process of this host: dead at once, no waiting
    # for the lease to expire; the attached view goes out saying so
    saved = [o["data"] for o in page.outputs(attach) if "data" in o]
    assert "interrupted: no runner since" in saved[0]["text/plain"], saved
    try:
        _until("the attached widget", lambda: len(page.widgets()) > before, timeout=20)
        _until("interrupted", lambda: "interrupted: no runner since" in page.header(), timeout=10)
    finally:
        page.shot("dead-run")
    assert "running" not in page.header().splitlines()[0]
    page.click("resume")  # a dead run resumes from the widget that shows it
    _until("completed", lambda: "completed, 19/19 steps" in page.header(), timeout=90)
    assert page.status() == "completed"


def test_compare_view_is_left_aligned_in_jupyterlab(lab, browser, project) -> None:
    page = Page(browser, f"sqlite:///{project}/browser.db")
    browser.get(f"{lab}/lab/tree/notebooks/06_iterate_and_compare.ipynb?reset")
    _until("the kernel", lambda: page.kernel_status() == "idle", timeout=90, every=0.3)
    page.command("notebook:run-all-cells")
    table = _until("the compare table", lambda: browser.find_elements("css selector",
                   ".nyx-cmp"), timeout=120)[0]  # fmt: skip
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", table)
    aligns = browser.execute_script(
        "return [...arguments[0].querySelectorAll('td, th')]"
        ".map(c => window.getComputedStyle(c).textAlign);",
        table,
    )
    path = str(ARTIFACTS / "compare.png")
    browser.save_screenshot(path)
    assert aligns and set(aligns) == {"left"}, sorted(set(aligns))
    headers = table.find_elements("css selector", "th")
    assert "baseline" in headers[1].text and "revision 1" in headers[2].text


def test_cancel_batch_in_notebook_05_says_what_happened_and_what_it_cost(
    lab, browser, project
) -> None:
    page = Page(browser, f"sqlite:///{project}/browser.db")
    browser.get(f"{lab}/lab/tree/notebooks/05_resume_and_recover.ipynb?reset")
    _until("the kernel", lambda: page.kernel_status() == "idle", timeout=90, every=0.3)
    page.command("notebook:run-all-cells")

    def offline_batch() -> bool:  # the last widget is the offline batch's, waiting 30 s
        return "offline batch" in page.widgets()[-1].text and page.button("cancel-batch")

    _until("the offline batch's Cancel batch", offline_batch, timeout=120)
    page.shot("batch-waiting", widget_only=True)
    page.click("cancel-batch")
    _until("the kernel to finish the cells", lambda: page.kernel_status() == "idle", timeout=120)
    page.shot("batch-canceled", widget_only=True)
    cells = int(page.js("return window.jupyterapp.shell.currentWidget.content.model.cells.length;"))
    check = next(i for i in range(cells) if "offline batch run:" in str(page.outputs(i)))
    text = "".join("".join(o.get("text", "")) for o in page.outputs(check))
    assert "offline batch run: completed" in text, text
    assert "errored/expired/canceled; re-run live at full price" in text, text
    assert "live" in text.split("service_tier")[-1], text  # the cost of each tier, live too
