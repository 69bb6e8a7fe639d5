"""Datasets as fan-out items: files, SQL, DataFrames; keys checked; a frozen copy; reruns by row."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import select

import nyxnb
from nyxnb.cli.main import cli
from nyxnb.engine.workflows import create_workflow
from nyxnb.errors import SpecError
from nyxnb.store.models import LlmCall, StepItem, Workflow, WorkflowStep
from tests.helpers import minimal

SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "stars": {"type": "integer", "maximum": 5}},
    "required": ["topic", "stars"],
}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def papers(n: int) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "title": f"Paper {i}", "year": 2000 + i % 20} for i in range(n)]


def spec(source: dict[str, Any], **step: Any) -> dict[str, Any]:
    return {
        "name": "papers",
        "defaults": {"provider": "offline", "fallback": [], "cache": False},
        "steps": [
            {"name": "extract", "type": "fan-out", "persona": "Cael", "items_from": source,
             "output_schema": SCHEMA, "prompt": "Classify {{ item.title }} ({{ item.year }})",
             **step},
        ],
    }  # fmt: skip


def items(store, workflow_id: str) -> list[StepItem]:
    with store.session() as s:
        step = s.scalar(select(WorkflowStep.id).where(WorkflowStep.workflow_id == workflow_id))
        return list(s.scalars(select(StepItem).where(StepItem.step_id == step).order_by("idx")))


def item_calls(store, workflow_id: str) -> list[LlmCall]:
    with store.session() as s:
        query = select(LlmCall).where(LlmCall.workflow_id == workflow_id, LlmCall.outcome == "ok")
        return list(s.scalars(query))


def test_csv_rows_become_items_with_columns_as_template_fields(store, tmp_path):
    minimal(store)
    write_csv(tmp_path / "papers.csv", papers(5))
    (tmp_path / "spec.json").write_text(
        json.dumps(spec({"path": "papers.csv", "key": "id", "heading": "{{ item.title }}!"}))
    )
    result = nyxnb.run(tmp_path / "spec.json", tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    rows = items(store, result.workflow_id)
    assert [r.key for r in rows] == [f"p{i}" for i in range(5)]
    assert rows[2].heading == "Paper 2!" and rows[2].data == {
        "id": "p2",
        "title": "Paper 2",
        "year": 2002,
    }
    assert rows[2].input == "Classify Paper 2 (2002)"
    assert all(set(json.loads(r.output or "")) == {"topic", "stars"} for r in rows)
    with store.session() as s:  # the stored spec names the file; it does not copy the rows
        stored = s.get_one(Workflow, result.workflow_id).spec
    assert "Paper 2" not in json.dumps(stored)


def test_resume_never_reads_the_file_again(store, tmp_path):
    minimal(store)
    path = write_csv(tmp_path / "papers.csv", papers(3))
    workflow_id = create_workflow(
        store, spec({"path": str(path), "key": "id"}), tenant="nyx", project="BRbase"
    )
    path.unlink()  # gone before the run: the frozen copy in step_items is what runs
    result = nyxnb.resume(workflow_id, store=store)
    assert result.ok, result.error
    assert [r.status for r in items(store, workflow_id)] == ["completed"] * 3


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_json_jsonl_and_parquet_files(sqlite_store, tmp_path, fmt):
    minimal(sqlite_store)
    frame = pd.DataFrame(papers(4))
    path = tmp_path / f"papers.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=fmt == "jsonl")
    result = nyxnb.run(
        spec({"path": str(path), "key": "id"}), tenant="nyx", project="BRbase", store=sqlite_store
    )
    assert result.ok, result.error
    assert [r.key for r in items(sqlite_store, result.workflow_id)] == ["p0", "p1", "p2", "p3"]


def test_sql_over_files_relative_to_the_spec(sqlite_store, tmp_path):
    minimal(sqlite_store)
    write_csv(tmp_path / "papers.csv", papers(10))
    query = "select * from 'papers.csv' where year >= 2005 order by id"
    (tmp_path / "spec.json").write_text(json.dumps(spec({"sql": query, "key": "id"})))
    result = nyxnb.run(tmp_path / "spec.json", tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    assert [r.key for r in items(sqlite_store, result.workflow_id)] == [
        f"p{i}" for i in range(5, 10)
    ]


@pytest.mark.parametrize("kind", ["pandas", "records"])
def test_a_dataframe_or_list_of_dicts_from_python(sqlite_store, kind):
    minimal(sqlite_store)
    data: Any = pd.DataFrame(papers(3)) if kind == "pandas" else papers(3)
    result = nyxnb.run(
        spec({"data": data, "key": "id"}), tenant="nyx", project="BRbase", store=sqlite_store
    )
    assert result.ok, result.error
    assert len(items(sqlite_store, result.workflow_id)) == 3
    with sqlite_store.session() as s:
        stored = s.get_one(Workflow, result.workflow_id).spec
    assert stored["steps"][0]["items_from"]["data"] == "<python data>"


def test_duplicate_or_missing_keys_are_a_spec_error_naming_the_rows(sqlite_store, tmp_path):
    minimal(sqlite_store)
    rows = papers(6)
    rows[4]["id"] = "p1"
    path = write_csv(tmp_path / "dup.csv", rows)
    with pytest.raises(SpecError, match=r"duplicate 'id': 'p1' in rows 2, 5") as err:
        create_workflow(sqlite_store, spec({"path": str(path), "key": "id"}), tenant="nyx",
                        project="BRbase")  # fmt: skip
    assert err.value.field == "steps[0].items_from.key"
    rows = papers(4)
    rows[3]["id"] = ""
    path = write_csv(tmp_path / "missing.csv", rows)
    with pytest.raises(SpecError, match=r"no 'id' in row\(s\) 4"):
        create_workflow(sqlite_store, spec({"path": str(path), "key": "id"}), tenant="nyx",
                        project="BRbase")  # fmt: skip
    with pytest.raises(SpecError, match="key column 'ref' is not in the dataset"):
        create_workflow(sqlite_store, spec({"path": str(path), "key": "ref"}), tenant="nyx",
                        project="BRbase")  # fmt: skip
    with sqlite_store.session() as s:  # nothing was written
        assert s.scalar(select(Workflow.id)) is None


def test_rerun_with_edited_rows_calls_exactly_those(store, tmp_path):
    """200 rows, 1% edited (2 rows), one removed, one added: exactly 3 calls."""
    minimal(store)
    rows = papers(200)
    path = write_csv(tmp_path / "papers.csv", rows)
    first = nyxnb.run(spec({"path": str(path), "key": "id"}), tenant="nyx", project="BRbase",
                      store=store)  # fmt: skip
    assert first.ok, first.error
    rows[10]["title"] = "Paper 10, revised"
    rows[150]["year"] = 1999
    del rows[77]
    rows.append({"id": "p_new", "title": "A new paper", "year": 2024})
    write_csv(path, rows)
    second = nyxnb.rerun(first.workflow_id, spec({"path": str(path), "key": "id"}), store=store)
    assert second.ok, second.error
    called = sorted(c.item_idx for c in item_calls(store, second.workflow_id))
    new_rows = items(store, second.workflow_id)
    keys = {r.idx: r.key for r in new_rows}
    assert sorted(keys[i] for i in called) == ["p10", "p150", "p_new"]
    assert "p77" not in keys.values() and len(new_rows) == 200
    old = {r.key: r.output for r in items(store, first.workflow_id)}
    same = [r for r in new_rows if r.key not in ("p10", "p150", "p_new")]
    assert all(r.output == old[r.key] for r in same)
    third = nyxnb.rerun(second.workflow_id, spec({"path": str(path), "key": "id"}), store=store)
    assert third.ok and item_calls(store, third.workflow_id) == []  # unchanged: no call at all


def test_a_structured_list_output_feeds_items_from_step_as_rows(sqlite_store):
    minimal(sqlite_store)
    body = {
        "name": "ideas",
        "defaults": {"provider": "offline", "fallback": [], "cache": False},
        "steps": [
            {"name": "brainstorm", "persona": "Athena", "prompt": "Ideas for {{ project.name }}",
             "output_schema": {"type": "object", "properties": {"ideas": {
                 "type": "array", "minItems": 3, "maxItems": 3, "items": {
                     "type": "object", "properties": {"title": {"type": "string"},
                                                      "effort": {"type": "integer"}},
                     "required": ["title", "effort"]}}}, "required": ["ideas"]}},
            {"name": "expand", "type": "fan-out", "persona": "Cael", "items_from": "brainstorm",
             "prompt": "Expand {{ item.title }} (effort {{ item.effort }})"},
        ],
    }  # fmt: skip
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    with sqlite_store.session() as s:
        steps = {st.name: st for st in s.scalars(select(WorkflowStep))}
        ideas = json.loads(steps["brainstorm"].output or "")["ideas"]
        got = [i.input for i in sorted(steps["expand"].items, key=lambda i: i.idx)]
    assert got == [f"Expand {i['title']} (effort {i['effort']})" for i in ideas]


def test_compare_shows_changed_rows_and_fields(store, tmp_path):
    minimal(store)
    rows = papers(8)
    path = write_csv(tmp_path / "papers.csv", rows)
    first = nyxnb.run(spec({"path": str(path), "key": "id"}), tenant="nyx", project="BRbase",
                      store=store)  # fmt: skip
    rows[3]["title"] = "Paper 3, revised"
    del rows[5]
    rows.append({"id": "p_new", "title": "New", "year": 2024})
    write_csv(path, rows)
    second = nyxnb.rerun(first.workflow_id, spec({"path": str(path), "key": "id"}), store=store)
    result = nyxnb.compare([first.workflow_id, second.workflow_id], store=store)
    (row,) = [r for r in result.rows if r.step == "extract"]
    assert row.rows[0] is None
    changes = row.rows[1]
    assert (changes.changed, changes.added, changes.removed) == (1, 1, 1)
    by_key = {c.key: c for c in changes.rows}
    assert by_key["p3"].kind == "changed" and by_key["p3"].inputs == ("title",)
    assert set(by_key["p3"].fields) <= {"topic", "stars"} and by_key["p3"].fields
    assert by_key["p5"].kind == "removed" and by_key["p_new"].kind == "added"
    url = store.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(cli, ["--db", url, "compare", first.workflow_id, second.workflow_id])
    assert out.exit_code == 0, out.output
    assert "1 changed, 1 added, 1 removed" in out.output
    assert "changed  p3: inputs title; fields" in out.output


def test_a_body_column_is_the_items_body(sqlite_store):
    """``item.body`` is a field of every item: a dataset's ``body`` column must fill it, not be
    shadowed by the empty default (an edited body would then never be called again)."""
    minimal(sqlite_store)
    rows = [{"id": "a", "title": "T", "body": "the abstract"}]
    body = spec({"data": rows, "key": "id"}, prompt="{{ item.title }}: {{ item.body }}")
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=sqlite_store)
    assert result.ok, result.error
    assert items(sqlite_store, result.workflow_id)[0].input == "T: the abstract"
