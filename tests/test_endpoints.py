"""Named endpoints: each called at its own URL with its own key, in chains, matrices and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import nyxnb
from nyxnb.cli.main import cli
from nyxnb.engine.iterate.variants import parse_matrix, run_matrix
from nyxnb.errors import MissingExtra, MissingKey, SpecError, UnknownEndpoint
from nyxnb.store.models import LlmCall, Workflow
from nyxnb.testing import FakeProviderServer, reply
from tests.helpers import minimal


@pytest.fixture
def second_server() -> Iterator[FakeProviderServer]:
    """Another OpenAI-compatible server on its own port (e.g. a local Ollama)."""
    with FakeProviderServer() as srv:
        yield srv


def one_step(provider: str | list[str], **step: object) -> dict:
    """One llm step; a list is the step's own chain, a string the workflow's provider."""
    if isinstance(provider, list):
        step["provider"] = provider
    return {
        "name": "ep",
        "defaults": {"provider": "offline" if isinstance(provider, list) else provider,
                     "fallback": [], "cache": False},
        "steps": [{"name": "ask", "persona": "Athena", "prompt": "Say hi", **step}],
    }  # fmt: skip


def calls(store) -> list[LlmCall]:
    with store.session() as s:
        rows = s.scalars(select(LlmCall).order_by(LlmCall.created_at)).all()
        for row in rows:
            s.expunge(row)
    return list(rows)


def headers_of(srv: FakeProviderServer, suffix: str) -> list[dict[str, str]]:
    return [dict(r.headers) for r in srv.received if r.path.split("?")[0].endswith(suffix)]


def test_matrix_over_two_openai_endpoints_and_anthropic(
    store, fake_server, second_server, monkeypatch
):
    """The issue's "done when": each endpoint at its own URL with its own key, effort reaching
    each API, reasoning tokens ledgered apart."""
    minimal(store)
    monkeypatch.setenv("LOCAL_KEY", "key-local")
    monkeypatch.setenv("GROQ_API_KEY", "key-groq")
    groq = FakeProviderServer().start()
    try:
        for srv, tokens in ((second_server, 11), (groq, 13)):
            srv.set_default("openai", reply("ok", reasoning_tokens=tokens, output_tokens=5))
        fake_server.set_default("anthropic", reply("ok", reasoning_tokens=17, output_tokens=5))
        body = one_step("offline")
        body["defaults"]["reasoning"] = {"effort": "high"}
        body["endpoints"] = {
            "local": {
                "api": "openai",
                "base_url": f"{second_server.url}/v1",
                "key_env": "LOCAL_KEY",
            },
            "groq": {"api": "openai", "base_url": f"{groq.url}/v1", "key_env": "GROQ_API_KEY"},
        }
        matrix = parse_matrix(["provider=groq:llama-3.3-70b,local:llama3.1:8b,anthropic"])
        exp = run_matrix(body, matrix=matrix, tenant="nyx", project="BRbase", store=store)
        assert exp.ok, [r.error for r in exp.results]
        local_req, groq_req = second_server.received[-1], groq.received[-1]
    finally:
        groq.stop()
    assert local_req.headers["authorization"] == "Bearer key-local"
    assert groq_req.headers["authorization"] == "Bearer key-groq"
    assert local_req.path == "/v1/chat/completions" == groq_req.path
    local_body, groq_body = local_req.json(), groq_req.json()
    assert local_body["model"] == "llama3.1:8b" and groq_body["model"] == "llama-3.3-70b"
    assert local_body["reasoning_effort"] == "high" == groq_body["reasoning_effort"]
    claude = fake_server.requests[-1][2]
    assert claude["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert claude["max_tokens"] > 24576  # raised above the budget
    assert fake_server.hits["openai"] == 0  # the built-in openai was never called
    ledger = {c.provider: c for c in calls(store)}
    assert set(ledger) == {"local", "groq", "anthropic"}
    assert (ledger["local"].reasoning_tokens, ledger["groq"].reasoning_tokens) == (11, 13)
    assert ledger["anthropic"].reasoning_tokens == 17
    assert ledger["anthropic"].output_tokens == 22  # reasoning is inside output_tokens
    assert ledger["local"].cost_usd == 0  # a custom URL is free unless pricing.yaml prices it
    assert ledger["anthropic"].cost_usd > 0


def test_flex_waits_through_resource_unavailable_and_is_priced_as_flex(store, fake_server):
    from nyxnb.providers.pricing import price_for
    from nyxnb.testing import flex_unavailable

    minimal(store)
    fake_server.script(
        "openai", flex_unavailable(), reply("ok", input_tokens=1000, output_tokens=500)
    )
    result = nyxnb.run(one_step("openai:o4-mini", service_tier="flex"), tenant="nyx",
                       project="BRbase", store=store)  # fmt: skip
    assert result.ok, result.error
    assert [r.json()["service_tier"] for r in fake_server.received] == ["flex", "flex"]
    first, second = calls(store)
    assert (first.outcome, first.error_kind) == ("error", "rate_limited")  # waited, not down
    assert (second.outcome, second.api_tier, second.service_tier) == ("ok", "flex", "live")
    flex = price_for("openai", "o4-mini", tier="flex").cost(1000, 500)
    standard = price_for("openai", "o4-mini").cost(1000, 500)
    assert flex < standard and second.cost_usd == pytest.approx(flex)


def test_azure_url_and_header_shape(store, fake_server, monkeypatch):
    minimal(store)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key")
    body = one_step("azure:my-gpt4o-deployment", temperature=0.3, top_p=0.9, seed=7)
    body["endpoints"] = {
        "azure": {"api": "azure-openai", "endpoint": fake_server.url,
                  "api_version": "2024-10-21", "key_env": "AZURE_OPENAI_API_KEY"},
    }  # fmt: skip
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    req = fake_server.received[-1]
    assert (
        req.path
        == "/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21"
    )
    assert req.headers["api-key"] == "azure-key" and "authorization" not in req.headers
    sent = req.json()
    assert (sent["temperature"], sent["top_p"], sent["seed"]) == (0.3, 0.9, 7)
    assert calls(store)[-1].provider == "azure"


def test_bedrock_request_shape_as_the_sdk_signs_it(store, fake_server, monkeypatch):
    pytest.importorskip("boto3")
    minimal(store)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"
    body = one_step(f"bedrock:{model}", reasoning={"budget_tokens": 4000}, stop=["END"])
    body["endpoints"] = {
        "bedrock": {"api": "anthropic-bedrock", "region": "eu-west-1", "base_url": fake_server.url}
    }
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    req = fake_server.received[-1]
    # every live call streams: Bedrock's streaming path, answered as an AWS event stream
    assert req.path == f"/model/{model}/invoke-with-response-stream"
    auth = req.headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/bedrock/aws4_request" in auth and "x-amz-date" in req.headers
    sent = req.json()
    assert sent["anthropic_version"] and "model" not in sent  # the model is in the path
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4000}
    assert sent["stop_sequences"] == ["END"] and sent["max_tokens"] == 4000 + 2048
    assert calls(store)[-1].provider == "bedrock"


def test_vertex_request_shapes_for_gemini_and_claude(store, fake_server, monkeypatch):
    minimal(store)
    monkeypatch.setenv("VERTEX_TOKEN", "ya29.token")
    vertex = {"project": "proj-1", "location": "us-central1", "base_url": fake_server.url,
              "token_env": "VERTEX_TOKEN"}  # fmt: skip
    body = one_step(["gvertex:gemini-2.5-flash"], reasoning={"effort": "low"}, seed=3)
    body["endpoints"] = {"gvertex": {"api": "google", "vertexai": True, **vertex}}
    assert nyxnb.run(body, tenant="nyx", project="BRbase", store=store).ok
    req = fake_server.received[-1]
    assert req.path.split("?")[0] == (
        "/v1beta1/projects/proj-1/locations/us-central1/publishers/google/models/"
        "gemini-2.5-flash:streamGenerateContent"
    )
    assert req.headers["authorization"] == "Bearer ya29.token"
    config = req.json()["generationConfig"]
    thinking = config["thinkingConfig"]  # this SDK sends Vertex the proto's snake_case name
    assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 2048
    assert config["seed"] == 3

    body = one_step(["cvertex:claude-haiku-4-5"])
    # the real base URL is https://{location}-aiplatform.googleapis.com/v1
    claude = vertex | {"base_url": f"{fake_server.url}/v1"}
    body["endpoints"] = {"cvertex": {"api": "anthropic-vertex", **claude}}
    assert nyxnb.run(body, tenant="nyx", project="BRbase", store=store).ok
    req = fake_server.received[-1]
    assert req.path == (
        "/v1/projects/proj-1/locations/us-central1/publishers/anthropic/models/"
        "claude-haiku-4-5:streamRawPredict"
    )
    assert req.headers["authorization"] == "Bearer ya29.token"
    assert req.json()["anthropic_version"] and "model" not in req.json()


def test_a_keyless_local_endpoint_and_the_stored_spec_holds_names_only(
    store, second_server, monkeypatch
):
    minimal(store)
    monkeypatch.setenv("GROQ_API_KEY", "sk-groq-secret-value-123456")
    body = one_step(["local:qwen3:0.6b"])
    body["endpoints"] = {
        "local": {"api": "openai", "base_url": f"{second_server.url}/v1", "key_env": None},
        "groq": {"api": "openai", "base_url": "http://127.0.0.1:9/v1", "key_env": "GROQ_API_KEY"},
    }
    result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert result.ok, result.error
    assert second_server.received[-1].headers["authorization"] == "Bearer no-key"
    assert second_server.received[-1].json()["model"] == "qwen3:0.6b"
    with store.session() as s:
        stored = s.scalar(select(Workflow.spec))
    text = json.dumps(stored)
    assert "GROQ_API_KEY" in text and "sk-groq-secret" not in text
    with pytest.raises(SpecError, match="key_env"):
        nyxnb.load_spec(body | {"endpoints": {"x": {"api": "openai", "api_key": "sk-1"}}})


def test_endpoint_errors_are_one_line_naming_the_fix(store, monkeypatch):
    minimal(store)
    with pytest.raises(UnknownEndpoint, match="declare it under `endpoints:`"):
        nyxnb.run(one_step("nowhere:some-model"), tenant="nyx", project="BRbase", store=store)
    body = one_step("groq:llama")
    body["endpoints"] = {
        "groq": {"api": "openai", "base_url": "http://x/v1", "key_env": "GROQ_KEY"}
    }
    with pytest.raises(MissingKey, match="set GROQ_KEY"):
        nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    monkeypatch.setitem(__import__("sys").modules, "boto3", None)  # as if not installed
    body["endpoints"] = {"aws": {"api": "anthropic-bedrock", "region": "us-east-1"}}
    body["defaults"]["provider"] = "aws:claude"
    with pytest.raises(MissingExtra) as err:
        nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
    assert str(err.value) == "endpoint 'aws' needs boto3 (pip install 'nyxnb[bedrock]')"


def test_temperature_with_anthropic_thinking_is_a_spec_error_naming_the_step(store):
    minimal(store)
    body = one_step(["openai", "anthropic"], temperature=0.5, reasoning="medium")
    with pytest.raises(SpecError, match="step 'ask': Anthropic extended thinking"):
        nyxnb.run(body, tenant="nyx", project="BRbase", store=store)


def test_project_and_user_files_declare_endpoints(tmp_path, monkeypatch, second_server):
    from nyxnb.providers.endpoints import endpoint_table

    user = tmp_path / "user.yaml"
    user.write_text("endpoints:\n  local: {api: openai, base_url: 'http://a/v1', key_env: null}\n"
                    "  mine: {api: anthropic, key_env: MY_KEY}\n")  # fmt: skip
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (project / "nyxnb.yaml").write_text(
        "endpoints:\n  local: {api: openai, base_url: 'http://b/v1', key_env: null}\n"
    )
    monkeypatch.setenv("NYXNB_USER_CONFIG", str(user))
    monkeypatch.chdir(project)
    table = endpoint_table()
    assert table["local"].spec.base_url == "http://b/v1"  # the project's file wins the user's
    assert table["mine"].spec.key_env == "MY_KEY"
    spec_level = nyxnb.load_spec(one_step("local") | {"endpoints": {
        "local": {"api": "openai", "base_url": "http://c/v1", "key_env": None}}})  # fmt: skip
    assert endpoint_table(spec_level.endpoints)["local"].spec.base_url == "http://c/v1"


def test_models_command_lists_each_endpoint(fake_server, second_server, monkeypatch, tmp_path):
    second_server.models["openai"] = ("llama3.1:8b", "qwen3:0.6b")
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(json.dumps(one_step("local") | {"endpoints": {
        "local": {"api": "openai", "base_url": f"{second_server.url}/v1", "key_env": None},
        "groq": {"api": "openai", "base_url": f"{second_server.url}/v1", "key_env": "NO_SUCH"},
    }}))  # fmt: skip
    out = CliRunner().invoke(cli, ["models", "--spec", str(spec_file), "--json"])
    assert out.exit_code == 0, out.output
    found = {e["endpoint"]: e for e in json.loads(out.output)}
    assert [m["model"] for m in found["local"]["models"]] == ["llama3.1:8b", "qwen3:0.6b"]
    assert found["local"]["key"] == "none needed" and found["groq"]["key"] == "missing"
    assert "NO_SUCH" in found["groq"]["error"]
    anthropic = {m["model"]: m for m in found["anthropic"]["models"]}
    assert anthropic["claude-haiku-4-5"]["input_usd_mtok"] > 0  # genai-prices knows it
    assert found["local"]["models"][0]["input_usd_mtok"] is None  # a local model: no price
    assert {m["model"] for m in found["google"]["models"]} == {"gemini-2.5-flash", "gemini-2.5-pro"}
    text = CliRunner().invoke(cli, ["models", "openai"])
    assert text.exit_code == 0 and "openai (openai, key set)" in text.output


def test_reasoning_tokens_show_in_show_compare_widget_and_duckdb(store, fake_server):
    from nyxnb.notebook import inspect
    from nyxnb.notebook.state import ProgressState

    minimal(store)
    fake_server.set_default("openai", reply("ok", output_tokens=4, reasoning_tokens=30))
    first = nyxnb.run(one_step("openai", reasoning="low"), tenant="nyx", project="BRbase",
                      store=store, on_event=None)  # fmt: skip
    assert first.ok, first.error
    state = ProgressState()
    for event in first.events:
        state.apply(event)
    assert "(30 reasoning)" in state.headline()
    url = store.url.render_as_string(hide_password=False)
    shown = CliRunner().invoke(cli, ["--db", url, "show", first.workflow_id])
    assert shown.exit_code == 0 and "(30 reasoning)" in shown.output, shown.output
    cell = nyxnb.compare([first.workflow_id], store=store).rows[0].cells[0]
    assert cell is not None and cell.reasoning_tokens == 30 and cell.output_tokens == 34
    con = inspect.connect(store)
    assert con.execute("SELECT sum(reasoning_tokens) FROM llm_calls").fetchone() == (30,)
    assert inspect.cost_by(store, "provider")["reasoning_tokens"].tolist() == [30]


def test_sampling_and_reasoning_are_in_the_cache_key():
    from nyxnb.engine.durable.cache import cache_key
    from nyxnb.providers.base import CompletionRequest

    base = CompletionRequest.of("sys", "hi")
    keys = {
        cache_key("openai", "m", base),
        cache_key("openai", "m", CompletionRequest.of("sys", "hi", top_p=0.5)),
        cache_key("openai", "m", CompletionRequest.of("sys", "hi", stop=("X",))),
        cache_key("openai", "m", CompletionRequest.of("sys", "hi", seed=1)),
        cache_key("openai", "m", CompletionRequest.of("sys", "hi", reasoning_effort="low")),
        cache_key("openai", "m", CompletionRequest.of("sys", "hi", service_tier="flex")),
        cache_key("local", "m", base),  # another endpoint: another entry
    }
    assert len(keys) == 7


def local_endpoint(srv: FakeProviderServer) -> dict:
    return {"local": {"api": "openai", "base_url": f"{srv.url}/v1", "key_env": None}}


def test_an_endpoint_down_is_down_alone(store, fake_server, second_server):
    """Breakers are per endpoint: a refused local server never marks the built-in openai down."""
    from nyxnb.testing import auth_error

    minimal(store)
    second_server.set_default("openai", auth_error())
    body = one_step(["local:m", "openai"])
    body["steps"].append({"name": "again", "persona": "Athena", "prompt": "Again",
                          "provider": ["local:m", "openai"]})  # fmt: skip
    body["endpoints"] = local_endpoint(second_server)
    assert nyxnb.run(body, tenant="nyx", project="BRbase", store=store).ok
    assert second_server.hits["openai"] == 1  # down after its refusal, for the rest of the run
    assert fake_server.hits["openai"] == 2
    ledger = [(c.provider, c.outcome, c.error_kind) for c in calls(store)]
    assert ("local", "error", "auth") in ledger and ledger.count(("openai", "ok", None)) == 2


def test_thinking_text_is_kept_only_when_asked(store, second_server):
    minimal(store)
    second_server.set_default("openai", reply("ok", reasoning_tokens=5, thinking="Let me see"))
    for keep in (False, True):
        body = one_step(["local:m"], keep_thinking=keep, reasoning="low")
        body["endpoints"] = local_endpoint(second_server)
        assert nyxnb.run(body, tenant="nyx", project="BRbase", store=store).ok
    kept = [(c.reasoning_tokens, c.thinking) for c in calls(store)]
    assert kept == [(5, None), (5, "Let me see")]


def test_the_cache_is_per_endpoint_and_its_place(store, second_server):
    """Same name, same model, another server: not served from the first server's cache."""
    minimal(store)
    third = FakeProviderServer().start()
    try:
        for srv in (second_server, third):
            body = one_step(["local:m"]) | {"endpoints": local_endpoint(srv)}
            body["defaults"]["cache"] = True
            for _ in range(2):  # the second run of each is a cache hit
                assert nyxnb.run(body, tenant="nyx", project="BRbase", store=store).ok
        assert second_server.hits["openai"] == 1 and third.hits["openai"] == 1
    finally:
        third.stop()


def test_batch_through_a_named_openai_endpoint_and_live_where_its_api_has_none(store, monkeypatch):
    from nyxnb.testing.batches import FakeBatchServer
    from tests.batch_helpers import batch_spec, fan_out

    minimal(store)
    monkeypatch.setenv("PROXY_KEY", "key-proxy")
    monkeypatch.setenv("AZ_KEY", "key-azure")
    with FakeBatchServer() as srv:
        body = batch_spec("proxy:gpt-4o-mini", n=3)
        body["defaults"]["service_tier"] = "flex"  # for the live step; a batch is its own tier
        body["endpoints"] = {
            "proxy": {"api": "openai", "base_url": f"{srv.url}/v1", "key_env": "PROXY_KEY"}
        }
        result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
        assert result.ok, result.error
        created = [r for r in srv.received if r.path == "/v1/batches" and r.method == "POST"]
        assert created and created[0].headers["authorization"] == "Bearer key-proxy"
        live = [r.json() for r in srv.received if r.path.endswith("/chat/completions")]
        assert [b["service_tier"] for b in live] == ["flex"]  # the analysis step
        uploads = [r.body for r in srv.received if r.path == "/v1/files" and r.method == "POST"]
        assert uploads and all(b"service_tier" not in body for body in uploads)
        _, ledger, batches = fan_out(store, result.workflow_id)
        assert {b.provider for b in batches} == {"proxy"}
        assert {(c.provider, c.service_tier) for c in ledger} == {("proxy", "batch")}

        body = batch_spec("az:gpt-4o-mini", n=3)  # Azure batches through storage: runs live
        body["endpoints"] = {"az": {"api": "azure-openai", "endpoint": srv.url,
                                    "api_version": "2024-10-21", "key_env": "AZ_KEY"}}  # fmt: skip
        result = nyxnb.run(body, tenant="nyx", project="BRbase", store=store)
        assert result.ok, result.error
        _, ledger, batches = fan_out(store, result.workflow_id)
        assert batches == [] and {(c.provider, c.service_tier) for c in ledger} == {("az", "live")}


def test_cli_provider_and_matrix_take_endpoint_model_entries(
    store, fake_server, second_server, tmp_path
):
    minimal(store)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps(one_step("openai") | {"endpoints": local_endpoint(second_server)})
    )
    url = store.url.render_as_string(hide_password=False)
    common = ["--db", url, "run", str(spec_file), "--tenant", "nyx", "--project", "BRbase"]
    one = CliRunner().invoke(cli, [*common, "--provider", "local:llama3.1:8b"])
    assert one.exit_code == 0, one.output
    assert second_server.received[-1].json()["model"] == "llama3.1:8b"
    both = CliRunner().invoke(cli, [*common, "--matrix", "provider=local:qwen3:0.6b,openai"])
    assert both.exit_code == 0, both.output
    assert second_server.received[-1].json()["model"] == "qwen3:0.6b"
    assert fake_server.hits["openai"] == 1
    assert {c.provider for c in calls(store)} == {"local", "openai"}


def test_a_named_anthropic_endpoint_has_its_own_url_and_key(store, fake_server, second_server,
                                                            monkeypatch):  # fmt: skip
    """Not the built-in's ANTHROPIC_BASE_URL nor ANTHROPIC_API_KEY: its own."""
    minimal(store)
    monkeypatch.setenv("TEAM_CLAUDE_KEY", "key-team")
    body = one_step(["team:claude-haiku-4-5"])
    body["endpoints"] = {"team": {"api": "anthropic", "base_url": second_server.url,
                                  "key_env": "TEAM_CLAUDE_KEY"}}  # fmt: skip
    assert nyxnb.run(body, tenant="nyx", project="BRbase", store=store).ok
    assert fake_server.hits["anthropic"] == 0 and second_server.hits["anthropic"] == 1
    headers = second_server.received[-1].headers  # this SDK sends the key as a bearer token
    assert "key-team" in (headers.get("x-api-key"), headers.get("authorization", "")[7:])


def test_a_named_endpoint_without_base_url_is_the_vendors_not_the_env_override(fake_server):
    """The built-ins follow ANTHROPIC_BASE_URL / OPENAI_BASE_URL (the fake); named ones do not."""
    import asyncio

    from nyxnb.providers.endpoints import endpoint_table
    from nyxnb.providers.registry import create_provider

    table = endpoint_table({n: nyxnb.load_spec(one_step("offline") | {"endpoints": {
        n: {"api": api, "key_env": "ANTHROPIC_API_KEY" if api == "anthropic" else "OPENAI_API_KEY"}
    }}).endpoints[n] for n, api in (("claude", "anthropic"), ("gpt", "openai"))})  # fmt: skip
    gemini = {"api": "google", "key_env": "GEMINI_API_KEY"}
    table |= endpoint_table(
        nyxnb.load_spec(one_step("offline") | {"endpoints": {"gem": gemini}}).endpoints
    )

    async def urls() -> list[str]:
        out = []
        for name in ("claude", "gpt", "gem"):
            provider = create_provider(name, None, table)
            client = provider.client()
            url = client._api_client._http_options.base_url if name == "gem" else client.base_url
            out.append(str(url))
            await provider.aclose()
        return out

    assert asyncio.run(urls()) == [
        "https://api.anthropic.com", "https://api.openai.com/v1/",
        "https://generativelanguage.googleapis.com/",
    ]  # fmt: skip
