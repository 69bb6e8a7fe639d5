"""CLI and batch edges a new user hits: each is one line naming the fix, exit 1, no traceback."""

# ruff: noqa: F811  (the store fixtures come from test_cli)

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from sqlalchemy import create_engine
from test_cli import SPEC, db, nyx, ok, one_line_error, run_offline, seeded_file  # noqa: F401

from nyxnb.errors import StoreUnavailable
from nyxnb.notebook.batch import run_batch, unknown_parameters
from nyxnb.store import open_store
from nyxnb.store.database import sqlite_path_problem


@pytest.fixture
def params_nb(tmp_path: Path) -> Path:
    """A notebook whose ``parameters`` cell defines ``provider`` and ``project``."""
    cell = new_code_cell("provider = 'offline'\nproject = 'BRbase'")
    cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[cell, new_code_cell("print(provider, project)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    path = tmp_path / "params.ipynb"
    nbformat.write(nb, path)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_batch_out_on_an_unwritable_path(db: str, params_nb: Path, tmp_path: Path) -> None:
    blocker = write(tmp_path / "a-file", "not a folder")
    sets = write(tmp_path / "p.yaml", "- {provider: offline}\n")
    result = nyx(db, "batch", str(params_nb), "--params", str(sets), "--out", str(blocker / "o"))
    one_line_error(result, "cannot write the executed notebooks to", "pass --out a folder")


def test_a_misspelled_parameter_fails_the_run_and_names_the_right_one(params_nb: Path) -> None:
    assert unknown_parameters(params_nb, {"provider": "x"}) is None
    why = unknown_parameters(params_nb, {"provder": "offline"})
    assert why is not None and "'provder' (did you mean 'provider'?)" in why


def test_batch_with_a_misspelled_parameter_exits_1(
    db: str, params_nb: Path, tmp_path: Path
) -> None:
    sets = write(tmp_path / "p.yaml", "- {provder: offline}\n")
    result = nyx(db, "batch", str(params_nb), "--params", str(sets), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "did you mean 'provider'?" in result.stdout and "0 ok, 1 failed" in result.stdout
    assert not (tmp_path / "o" / "params-001.ipynb").exists()  # never ran with the default


def test_bad_params_yaml_is_one_line_with_its_position(
    db: str, params_nb: Path, tmp_path: Path
) -> None:
    sets = write(tmp_path / "p.yaml", "- {provider: offline\n- {project: x}\n")
    result = nyx(db, "batch", str(params_nb), "--params", str(sets))
    line = one_line_error(result, "is not valid YAML", "at line", "fix that line")
    assert "\n" not in line


def test_batch_table_names_the_workflow_each_run_created(db: str, tmp_path: Path) -> None:
    nb = tmp_path / "run.ipynb"
    cell = new_code_cell("n = 1")
    cell.metadata["tags"] = ["parameters"]
    code = (
        "import nyxnb\n"
        f"r = nyxnb.run({SPEC!r}, tenant='nyx', project='BRbase', provider='offline')\n"
        "assert r.ok"
    )
    book = new_notebook(cells=[cell, new_code_cell(code)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}  # fmt: skip
    nbformat.write(book, nb)
    sets = write(tmp_path / "p.yaml", "- {n: 1}\n")
    result = ok(nyx(db, "batch", str(nb), "--params", str(sets), "--out", str(tmp_path / "o")))
    header = next(line for line in result.stdout.splitlines() if line.startswith("#"))
    assert "WORKFLOW" in header.split()
    row = next(line for line in result.stdout.splitlines() if line.startswith("1 "))
    assert len(row.split()[2]) == 36  # a workflow id, not "-"
    shown = ok(nyx(db, "list", "--json")).stdout
    store = open_store(db)
    try:
        results = run_batch(nb, [{"n": 2}], tmp_path / "o2", store=store, env={"NYXNB_DB_URL": db})
    finally:
        store.dispose()
    (workflow_id,) = results[0].workflow_ids
    assert workflow_id in ok(nyx(db, "list", "--json")).stdout and workflow_id not in shown


def test_sqlite_store_in_a_missing_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/folder/nyxnb.db"
    with pytest.raises(StoreUnavailable, match="folder .* does not exist") as info:
        open_store(url)
    assert "mkdir -p" in str(info.value)
    one_line_error(nyx(url, "list"), "does not exist", "mkdir -p")


def test_sqlite_store_that_is_a_read_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ro.db"
    open_store(f"sqlite:///{path}").dispose()
    path.chmod(0o444)
    if os.geteuid() == 0:  # root writes anyway: let the diagnosis see what a user's check sees
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != path)
        problem = sqlite_path_problem(create_engine(f"sqlite:///{path}"))
        assert problem is not None and "the file is read-only" in problem[0]
        assert "chmod u+w" in problem[1]
        return
    one_line_error(nyx(f"sqlite:///{path}", "list"), "the file is read-only", "chmod u+w")


def test_pause_on_a_completed_workflow_does_not_suggest_resume(db: str) -> None:
    wf = run_offline(db)
    line = one_line_error(nyx(db, "pause", wf), "is completed, not running", "nyxnb show")
    assert "resume" not in line


def test_clone_says_how_to_run_the_clone(db: str) -> None:
    wf = run_offline(db)
    out = ok(nyx(db, "clone", wf)).stdout.splitlines()
    clone_id = out[0].split("(")[-1].split(")")[0]
    assert out[-1] == f"run it: nyxnb resume {clone_id}"
    ok(nyx(db, "resume", clone_id))
