"""The curated notebooks: structure, safe parameters, clean outputs; the runbook's apply path.

nbval executes every notebook with its default parameters (``testpaths`` includes notebooks/);
these tests check what nbval does not: the shape of each notebook, and the migration runbook with
``apply=True`` (its default is a dry run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

import nyxnb
from nyxnb.notebook.batch import SECRET_PATTERNS, check_parameters, run_batch
from nyxnb.testing import FAKE_KEYS

NOTEBOOKS = Path(nyxnb.__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_run_workflow", "02_inspect_outputs", "03_clone_workflow", "04_migration_runbook",
         "05_resume_and_recover", "06_iterate_and_compare", "07_dataset_to_table"]  # fmt: skip
CHECK = "# NBVAL_CHECK_OUTPUT"


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def parameters(nb: nbformat.NotebookNode) -> dict[str, object]:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged `parameters` (papermill)"
    tree = ast.parse(cells[0].source)
    return {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)}  # fmt: skip


def test_the_curated_notebooks_are_there() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_a_notebook_has_prose_safe_parameters_and_reference_outputs(name: str) -> None:
    nb = load(name)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4  # prose a newcomer can follow
    params = parameters(nb)
    check_parameters(params)  # no key-like names or values
    assert params["db_url"] is None  # the store comes from NYXNB_DB_URL or the project
    checked = [c for c in nb.cells if c.cell_type == "code" and CHECK in c.source]
    assert checked and all(c.outputs for c in checked), "checked cells keep reference outputs"
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECK not in cell.source:
            assert not cell.outputs, (
                "only checked cells keep outputs (notebooks/_refresh_outputs.py)"
            )


@pytest.mark.parametrize("name", NAMES)
def test_no_key_in_a_stored_notebook(name: str) -> None:
    text = (NOTEBOOKS / f"{name}.ipynb").read_text()
    assert not any(value in text for value in FAKE_KEYS.values())
    assert not [why for why, rx in SECRET_PATTERNS if rx.search(text)]


def test_run_workflow_defaults_to_offline() -> None:
    params = parameters(load("01_run_workflow"))
    assert params["provider"] == "offline"
    assert re.fullmatch(r"data/workflows/[\w-]+\.yaml", str(params["spec"]))


@pytest.mark.slow
def test_the_runbook_applies_verifies_and_reverses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NYXNB_DB_URL", f"sqlite:///{tmp_path / 'nyxnb.db'}")
    params = {"apply": True, "reverse_after": True}
    [result] = run_batch(NOTEBOOKS / "04_migration_runbook.ipynb", [params], tmp_path / "out")
    assert result.ok, result.error
    outputs = "".join(
        o.get("text", "")
        for c in nbformat.read(result.output, as_version=4).cells
        for o in c.get("outputs", [])
    )
    assert "moved project 'BRbase' from nyx to clarait" in outputs
    assert "BRbase is no longer in nyx" in outputs and "every table as planned: True" in outputs
    assert "every table as before the move (the audit trail aside): True" in outputs
