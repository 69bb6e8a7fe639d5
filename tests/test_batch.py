"""``nyxnb batch``: papermill once per parameter set, every notebook kept, never a key in sight."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest
from click.testing import CliRunner
from nbformat.v4 import new_code_cell, new_notebook

import nyxnb
from nyxnb.cli.batch import batch
from nyxnb.errors import ConfigError
from nyxnb.notebook.batch import check_parameters, load_param_sets, run_batch
from nyxnb.notebook.inspect import read_tables
from nyxnb.store.seed import seed
from nyxnb.testing import FakeProviderServer, error

REPO = Path(nyxnb.__file__).resolve().parent.parent
NOTEBOOK_01 = REPO / "notebooks" / "01_run_workflow.ipynb"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A notebook with a ``parameters`` cell that fails when ``x == 2``."""
    params = new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    cells = [params, new_code_cell("if x == 2:\n    raise ValueError('x is two')"),
             new_code_cell("print('x =', x)")]  # fmt: skip
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


# --- no secrets as parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"api_key": "v4lue-api_key"},
        {"ANTHROPIC_API_KEY": "v4lue-ANTHROPIC_API_KEY"},
        {"githubToken": "v4lue-githubToken"},
        {"db_password": "v4lue-db_password"},
        {"client_secret": "v4lue-client_secret"},
        {"note": "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"},
        {"note": "AIzaSyA1234567890abcdefghijklmnopqrstuv"},
        {"db_url": "postgresql://nyx:s3cret@db.example/nyx"},
        {"nested": {"deep": ["ghp_abcdefghijklmnopqrstuvwxyz0123456789"]}},
    ],
)
def test_a_parameter_that_looks_like_a_secret_is_refused(params: dict[str, Any]) -> None:
    name = next(iter(params))
    with pytest.raises(ConfigError, match=f"parameter '{name}'") as raised:
        check_parameters(params)
    assert "environment" in str(raised.value)
    for value in params.values():  # the message names the parameter, never the value
        assert not isinstance(value, str) or value not in str(raised.value)


def test_the_value_of_a_key_in_the_environment_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-0123456789abcdef")
    with pytest.raises(ConfigError, match="'note'.*value of a key in the environment"):
        check_parameters({"note": "use tok-0123456789abcdef please"})


def test_ordinary_parameters_pass() -> None:
    ordinary = {"provider": "offline", "project": "BRbase", "max_tokens": 4000, "items": [1, 2]}
    check_parameters({**ordinary, "db_url": "sqlite:///data/nyxnb.db", "tenant": "nyx"})


# --- parameter files ---------------------------------------------------------------------------


def test_parameter_sets_from_yaml_and_csv(tmp_path: Path) -> None:
    listed = tmp_path / "runs.yaml"
    listed.write_text("- {provider: offline, project: BRbase}\n- {provider: google}\n")
    assert load_param_sets(listed) == [{"provider": "offline", "project": "BRbase"},
                                       {"provider": "google"}]  # fmt: skip
    merged = tmp_path / "runs.yml"
    merged.write_text("defaults: {tenant: nyx}\nruns:\n  - {project: BRbase}\n  - {project: X}\n")
    assert load_param_sets(merged) == [{"tenant": "nyx", "project": "BRbase"},
                                       {"tenant": "nyx", "project": "X"}]  # fmt: skip
    table = tmp_path / "runs.csv"
    table.write_text("provider,concurrency,cache,note\noffline,4,false,\ngoogle,8,true,hi\n")
    assert load_param_sets(table) == [
        {"provider": "offline", "concurrency": 4, "cache": False},
        {"provider": "google", "concurrency": 8, "cache": True, "note": "hi"},
    ]


@pytest.mark.parametrize("text", ["", "[]", "just a string", "- 1\n- 2\n"])
def test_a_parameter_file_without_sets_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "runs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="parameter file"):
        load_param_sets(path)


# --- running -----------------------------------------------------------------------------------


def test_run_batch_keeps_every_notebook_and_reports_failures(tiny: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    results = run_batch(tiny, [{"x": 1}, {"x": 2}], tmp_path / "out",
                        on_start=lambda i, n, p: seen.append(f"{i}/{n}"),
                        on_result=lambda r: seen.append(r.status))  # fmt: skip
    assert seen == ["1/2", "ok", "2/2", "failed"]
    ok, failed = results
    assert ok.ok and ok.error is None and ok.output.name == "tiny-001.ipynb"
    assert not failed.ok and failed.error.startswith("ValueError: x is two")
    assert "cell" in failed.error
    for result in results:
        executed = nbformat.read(result.output, as_version=4)
        assert executed.metadata.papermill.parameters == result.parameters
    banner = nbformat.read(failed.output, as_version=4).cells[0]  # papermill's error banner
    assert "An Exception was encountered" in "".join(banner.source)


def test_run_batch_checks_every_set_before_running_any(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'token'"):
        run_batch(tiny, [{"x": 1}, {"token": "abc"}], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prints_progress_and_a_table(tiny: Path, tmp_path: Path) -> None:
    params = tmp_path / "runs.yaml"
    params.write_text("- {x: 1}\n- {x: 2}\n")
    out = tmp_path / "out"
    args = [str(tiny), "--params", str(params), "--out", str(out)]
    text = CliRunner().invoke(batch, args, obj={"db": None, "json": False})
    assert text.exit_code == 1, text.output  # one run failed
    assert "[1/2] tiny.ipynb x=1" in text.output and "[2/2] tiny.ipynb x=2" in text.output
    assert "STATUS" in text.output and "ValueError: x is two" in text.output
    assert "1 ok, 1 failed" in text.output
    as_json = CliRunner().invoke(batch, [*args, "--json"], obj={"db": None})
    rows = json.loads(as_json.output)
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[0]["parameters"] == {"x": 1}


# --- the canary --------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_key_reaches_a_notebook_the_store_or_the_logs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Unique canary keys in the environment; runs via batch (in kernels) and via the engine."""
    tag = uuid.uuid4().hex
    canaries = {"ANTHROPIC_API_KEY": f"sk-ant-canary-{tag}", "OPENAI_API_KEY": f"sk-canary-{tag}",
                "GEMINI_API_KEY": f"canary-gemini-{tag}"}  # fmt: skip
    store_url = f"sqlite:///{tmp_path / 'nyxnb.db'}"
    monkeypatch.setenv("NYXNB_DB_URL", store_url)
    store = nyxnb.open_store(store_url)
    seed(store)
    with FakeProviderServer() as srv:
        for name, value in srv.env().items():
            monkeypatch.setenv(name, canaries.get(name, value))
        # a provider that echoes the key in its error message, as real ones partly do
        srv.set_default(
            "anthropic", error(401, f"invalid x-api-key {canaries['ANTHROPIC_API_KEY']}")
        )
        caplog.set_level(logging.DEBUG)
        results = run_batch(NOTEBOOK_01, [{"provider": "google"}, {"provider": "anthropic"}],
                            tmp_path / "out")  # fmt: skip
        spec = REPO / "data" / "workflows" / "brbase-plan.yaml"
        direct = nyxnb.run(spec, tenant="nyx", project="BRbase", provider="openai", store=store)
        hits = dict(srv.hits)
    assert [r.status for r in results] == ["ok", "failed"], [r.error for r in results]
    assert "invalid x-api-key" in (results[1].error or "")
    assert direct.ok and hits["google"] > 10 and hits["openai"] > 10 and hits["anthropic"] >= 1
    captured = capfd.readouterr()
    haystacks = {
        "executed notebooks": "\n".join(p.read_text() for p in (tmp_path / "out").glob("*.ipynb")),
        "store": "\n".join(f"{n}: {t.to_pylist()}" for n, t in read_tables(store).items()),
        "logs": caplog.text,
        "stdout/stderr": captured.out + captured.err,
        "batch results": json.dumps([r.to_dict() for r in results]),
        "run events": "\n".join(e.to_json() for e in direct.events),
    }
    assert "[redacted]" in haystacks["executed notebooks"]  # the echoed key was caught
    for where, text in haystacks.items():
        assert tag not in text, f"a canary key leaked into the {where}"
