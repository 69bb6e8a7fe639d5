"""Tables back: `nyxnb export` (CSV, JSONL, Parquet), a DataFrame, DuckDB views."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

import nyxnb
from nyxnb.cli.main import cli
from nyxnb.errors import ConfigError
from nyxnb.notebook.inspect import connect, results_df, results_views
from nyxnb.providers.structured import invalid_reason
from nyxnb.reports.table import export_table
from tests.helpers import minimal

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["bug", "feature"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 3},
        "title": {"type": "string"},  # also an input column: the input becomes input_title
    },
    "required": ["label", "priority", "title"],
}
TICKETS = [{"id": f"t{i}", "title": f"Ticket {i}", "votes": i} for i in range(6)]


@pytest.fixture
def done(store):
    minimal(store)
    body = {
        "name": "triage",
        "defaults": {"provider": "offline", "fallback": [], "cache": False},
        "steps": [
            {"name": "triage", "type": "fan-out", "persona": "Cael", "output_schema": SCHEMA,
             "items_from": {"data": TICKETS, "key": "id"},
             "prompt": "Triage {{ item.title }} ({{ item.votes }} votes)"},
        ],
    }  # fmt: skip
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    return result.workflow_id


COLUMNS = ["key", "heading", "id", "input_title", "votes", "label", "priority", "title"]
LEDGER = ["status", "provider", "model", "input_tokens", "output_tokens", "cost_usd"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_cli_export_one_row_per_item_with_inputs_fields_and_ledger(store, done, tmp_path, suffix):
    out = tmp_path / f"triage.{suffix}"
    url = store.url.render_as_string(hide_password=False)
    res = CliRunner().invoke(cli, ["--db", url, "export", done, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote 6 rows" in res.output
    frame = {
        "csv": pd.read_csv,
        "jsonl": lambda p: pd.read_json(p, lines=True),
        "parquet": pd.read_parquet,
    }[suffix](out)
    assert list(frame.columns) == COLUMNS + LEDGER
    assert list(frame["key"]) == [t["id"] for t in TICKETS]
    assert list(frame["input_title"]) == [t["title"] for t in TICKETS]
    assert list(frame["votes"]) == [t["votes"] for t in TICKETS]
    for row in frame.to_dict("records"):
        fields = {k: row[k] for k in ("label", "priority", "title")}
        assert invalid_reason(json.dumps(fields), SCHEMA) is None
    assert set(frame["provider"]) == {"offline"} and set(frame["model"]) == {"offline-1"}
    assert (frame["input_tokens"] > 0).all() and (frame["output_tokens"] > 0).all()


def test_dataframe_and_duckdb_views_match_the_export(store, done, tmp_path):
    df = results_df(store, done)
    export_table(store, done, tmp_path / "t.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert df.to_dict("records") == lines
    con = connect(store)
    assert results_views(con, store, done) == ["results_triage"]
    view = con.sql("SELECT * FROM results_triage").df()
    assert list(view.columns) == COLUMNS + LEDGER
    assert list(view["priority"]) == list(df["priority"]) and view["priority"].dtype == "int64"
    by_label = con.sql("SELECT label, count(*) AS n FROM results_triage GROUP BY 1").df()
    assert by_label["n"].sum() == len(TICKETS)


def test_unknown_format_and_step_are_one_clear_error(store, done, tmp_path):
    with pytest.raises(ConfigError, match="unknown format"):
        export_table(store, done, tmp_path / "t.xlsx")
    url = store.url.render_as_string(hide_password=False)
    res = CliRunner().invoke(
        cli, ["--db", url, "export", done, "--step", "nope", "--out", str(tmp_path / "x.csv")]
    )
    assert res.exit_code == 1 and "nope" in res.output
