"""Render the README's picture (``data/widget.png``): a screenshot of the live widget.

    .venv/bin/python notebooks/_render_readme_png.py

Runs ``tests/test_browser.py`` (JupyterLab in Debian's chromium, notebook 01 offline with its
simulated latency) and copies its screenshot of the progress widget mid-run, so the README shows
the widget itself as a researcher sees it, not a redrawing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "data" / "widget.png"


def main() -> None:
    """Run the browser test into a throwaway artifacts folder, copy its widget screenshot."""
    artifacts = Path(tempfile.mkdtemp(prefix="nyxnb-png-"))
    env = dict(os.environ, CI_ARTIFACTS=str(artifacts))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
               str(ROOT / "tests" / "test_browser.py")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    shot = artifacts / "widget.png"
    if done.returncode != 0 or not shot.is_file():
        sys.exit(f"the browser test did not produce {shot} (is chromium installed?)")
    shutil.copy(shot, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
