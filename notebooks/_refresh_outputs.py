"""Refresh the reference outputs nbval compares, after changing a notebook or what it shows.

    .venv/bin/python notebooks/_refresh_outputs.py [NOTEBOOK ...]

Runs each notebook (default: every ``notebooks/*.ipynb``) with papermill, offline, against a
throwaway store and with no provider keys in the environment, then writes back into the notebook
the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` and clears every other output and all
execution counts but theirs: the repository keeps clean notebooks holding the references.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
import papermill

HERE = Path(__file__).resolve().parent
MARK = "# NBVAL_CHECK_OUTPUT"
_ISOLATED_PREFIXES = ("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_", "NYXNB_")


def _clean_env(store_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
    return env | {"NYXNB_DB_URL": store_url, "NYXNB_PROGRESS": "text"}


def refresh(path: Path) -> int:
    """Execute ``path`` and store the checked cells' outputs in it; returns how many cells."""
    source = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="nyxnb-refresh-") as tmp:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(_clean_env(f"sqlite:///{tmp}/nyxnb.db"))
        try:
            executed = papermill.execute_notebook(
                str(path), str(Path(tmp) / path.name), cwd=str(path.parent), progress_bar=False
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)
    checked = 0
    for cell, ran in zip(source.cells, executed.cells, strict=True):
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        cell.outputs = []
        if MARK in cell.source:  # nbval wants a count on a reference cell with outputs
            checked += 1
            cell.execution_count = ran.execution_count
            cell.outputs = ran.outputs
    nbformat.write(source, path)
    return checked


def main(argv: list[str]) -> None:
    """Refresh the notebooks named in ``argv`` (default: all)."""
    paths = [Path(a) for a in argv] or sorted(HERE.glob("[0-9]*.ipynb"))
    for path in paths:
        print(f"{path.name}: {refresh(path)} checked cells refreshed")


if __name__ == "__main__":
    main(sys.argv[1:])
