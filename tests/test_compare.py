"""Compare runs step by step from Python, the CLI and the notebook view."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import nyxnb
from nyxnb.cli.main import cli
from nyxnb.errors import NotFound
from nyxnb.notebook.compare import compare as nb_compare
from tests.helpers import minimal
from tests.test_revisions import spec


@pytest.fixture
def two_runs(store, fake_server):
    minimal(store)
    first = nyxnb.run(spec(), tenant="nyx", project="BRbase", store=store)
    second = nyxnb.rerun(first.workflow_id, spec("Analyse {{ project.name }} twice"), store=store)
    assert first.ok and second.ok
    return first.workflow_id, second.workflow_id


def test_compare_lines_runs_up_by_step_with_diffs(store, two_runs):
    a, b = two_runs
    result = nyxnb.compare([a, b], store=store)
    rows = {r.step: r for r in result.rows}
    assert list(rows) == ["analysis", "features", "synthesis", "notes"]
    first, second = rows["analysis"].cells
    assert first is not None and second is not None
    assert first.prompt_diff == "" and "+Analyse {{ project.name }} twice" in second.prompt_diff
    assert second.output_diff.startswith("--- first")
    assert second.calls == 1 and second.cost_usd >= 0 and second.input_tokens > 0
    assert second.provider == "openai" and not second.reused
    notes = rows["notes"].cells[1]
    assert notes is not None and notes.reused and notes.calls == 0 and notes.prompt_diff == ""
    assert not rows["notes"].changed and rows["synthesis"].changed


def test_compare_cli_json_is_one_document(store, two_runs):
    url = store.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(cli, ["--db", url, "compare", *two_runs, "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert [w["id"] for w in doc["workflows"]] == list(two_runs)
    assert doc["steps"][0]["step"] == "analysis" and doc["steps"][0]["changed"] is True
    text = CliRunner().invoke(cli, ["--db", url, "compare", *two_runs])
    assert text.exit_code == 0 and "## analysis (llm)  [changed]" in text.output
    assert "prompt diff" in text.output and "(reused)" in text.output
    bad = CliRunner().invoke(cli, ["--db", url, "compare", "nope"])
    assert bad.exit_code == 1 and "nope" in bad.output


def test_notebook_view_renders_html_and_a_dataframe(store, two_runs):
    view = nb_compare(list(two_runs), store=store)
    page = view._repr_html_()
    assert "prompt changed" in page and "<table" in page and "<script" not in page
    assert "<th" in page and ">baseline<" in page and ">revision 1<" in page
    assert "text-align:left" in page.split("<table")[1]  # inline: no host style re-aligns it
    assert "<ins>" in page  # word-level changes against the baseline
    df = view.df
    assert len(df) == 8 and {"step", "run", "role", "output", "cost_usd", "score"} <= set(
        df.columns
    )
    assert df["workflow"].str.len().max() == 8  # short ids
    values = df.astype(object).to_numpy().ravel()
    assert not [v for v in values if v is None or (isinstance(v, float) and v != v)]  # NA only
    assert "changed steps: analysis, synthesis" in repr(view)


def test_word_diff_marks_words_not_lines():
    from nyxnb.notebook.compare import word_diff_html

    marked = word_diff_html("the router outer wall", "the router inner wall")
    assert marked == "the router <del>outer</del><ins>inner</ins> wall"


def test_unknown_id_is_a_clear_error(store, two_runs):
    with pytest.raises(NotFound, match="workflow or experiment"):
        nyxnb.compare(["missing"], store=store)


def test_matrix_runs_variants_as_one_experiment_and_compare_takes_its_id(store, tmp_path):
    minimal(store)
    path = tmp_path / "spec.json"
    body = spec()
    path.write_text(json.dumps(body))
    url = store.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(
        cli,
        ["--db", url, "run", str(path), "--tenant", "nyx", "--project", "BRbase",
         "--matrix", "provider=offline,offline:b", "--matrix", "max_tokens=100,200", "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.splitlines()[-1])
    assert len(summary["variants"]) == 4
    assert {v["status"] for v in summary["variants"]} == {"completed"}
    result = nyxnb.compare(summary["experiment_id"], store=store)
    assert result.labels == tuple(v["variant"] for v in summary["variants"])
    assert result.labels[0] == "provider=offline,max_tokens=100"
    cell = result.rows[0].cells[1]
    assert cell is not None and cell.provider == "offline"
    ignored = CliRunner().invoke(
        cli,
        ["--db", url, "run", str(path), "--tenant", "nyx", "--project", "BRbase",
         "--matrix", "max_tokens=100,200", "--provider", "offline", "--batch"],
    )  # fmt: skip
    assert ignored.exit_code == 2  # a flag the variants would not use is refused, not dropped
    assert "--provider, --batch cannot be used with --matrix" in ignored.output


def test_variants_block_and_bad_matrix(store):
    from nyxnb.engine.iterate.variants import parse_matrix, run_matrix

    minimal(store)
    body = spec(provider="offline")
    body["variants"] = {"cold": {"temperature": 0}, "warm": {"temperature": 1}}
    exp = run_matrix(body, tenant="nyx", project="BRbase", store=store)
    assert exp.ok and exp.variants == ("cold", "warm")
    with pytest.raises(nyxnb.SpecError, match="not a defaults key"):
        parse_matrix(["colour=red"])
