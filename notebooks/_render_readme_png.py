"""Render the README's picture of the progress view (``data/widget.png``) from a real run.

    .venv/bin/python notebooks/_render_readme_png.py

Runs the sample workflow offline (with simulated latency) on a throwaway store, catches it half
way through its implementation prompts, and draws the store's state as the widget shows it
(:func:`nyxnb.notebook.inspect.plot_progress`); then pauses the run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "data" / "widget.png"


def main() -> None:
    """Run, snapshot, save."""
    folder = tempfile.mkdtemp(prefix="nyxnb-png-")
    os.environ["NYXNB_DB_URL"] = f"sqlite:///{folder}/nyxnb.db"
    os.environ["NYXNB_PROGRESS"] = "text"
    import nyxnb
    import nyxnb.notebook.inspect as ni
    from nyxnb.engine.seed import seed
    from nyxnb.notebook.widgets import WorkflowProgress

    store = nyxnb.open_store()
    seed(store)
    spec = HERE.parent / "data" / "workflows" / "brbase-plan.yaml"
    latency = {"offline": {"latency_ms": 300}}
    with open(os.devnull, "w") as quiet:
        progress = WorkflowProgress.start(
            spec,
            tenant="nyx",
            project="BRbase",
            store=store,
            provider="offline",
            provider_options=latency,
        )
        assert progress._text is not None
        progress._text.stream = quiet
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = progress.state.steps.get(11)  # implement_06
            if row is not None and row.status == "running":
                break
            time.sleep(0.01)
        time.sleep(0.1)
        ni.plot_progress(store, progress.state.workflow_id).savefig(OUT, dpi=110)
        progress.pause()
        progress.result()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
