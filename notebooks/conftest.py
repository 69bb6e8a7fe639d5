"""nbval runs each notebook in its own kernel: give every kernel a fresh store and no real keys.

nbval starts a notebook's kernel while setting up the notebook's first cell, and the kernel
inherits this process's environment; so the environment is prepared around that setup (a hook,
not a fixture: fixtures run after the kernel has started) and restored right after it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

_ISOLATED_PREFIXES = ("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_", "NYXNB_")
_KEEP = ("NYXNB_TEST_PG_URL",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Before a notebook's kernel starts: a throwaway SQLite store, no provider keys or URLs."""
    notebook = item.parent
    if item.path.suffix != ".ipynb" or getattr(notebook, "_nyxnb_env", False):
        yield
        return
    notebook._nyxnb_env = True  # type: ignore[union-attr]
    folder = tempfile.mkdtemp(prefix="nyxnb-nbval-")
    item.config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES) and name not in _KEEP:
            del os.environ[name]
    os.environ["NYXNB_DB_URL"] = f"sqlite:///{folder}/nyxnb.db"
    os.environ["NYXNB_PROGRESS"] = "text"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
