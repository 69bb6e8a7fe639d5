"""Reasoning, service tier and sampling mapped to each API's own parameters."""

from __future__ import annotations

from nyxnb.providers.anthropic import params_for
from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.google import config_of
from nyxnb.providers.openai import _params
from nyxnb.providers.params import budget, effort


def req(**kw: object) -> CompletionRequest:
    return CompletionRequest.of("sys", "hi", **kw)


def test_effort_and_budget_map_both_ways():
    assert [effort(req(reasoning_budget=n)) for n in (0, 1024, 2000, 8192, 9000)] == [
        "minimal", "minimal", "low", "medium", "high",
    ]  # fmt: skip
    assert budget(req(reasoning_effort="medium")) == 8192 and budget(req()) is None


def test_openai_params():
    sent = _params(
        req(reasoning_budget=3000, service_tier="priority", temperature=0.1, top_p=0.5,
            stop=("END",), seed=9),
        "o4-mini", "max_completion_tokens",
    )  # fmt: skip
    assert sent["reasoning_effort"] == "medium" and sent["service_tier"] == "priority"
    assert (sent["temperature"], sent["top_p"], sent["stop"], sent["seed"]) == (
        0.1,
        0.5,
        ["END"],
        9,
    )
    assert "reasoning_effort" not in _params(req(), "gpt-4o-mini", "max_tokens")


def test_anthropic_thinking_budget_raises_max_tokens_and_drops_seed():
    sent = params_for(req(reasoning_effort="low", max_tokens=1000, seed=3), "claude-sonnet-4-5")
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] == 2048 + 1000 and "seed" not in str(sent)
    small = params_for(req(reasoning_budget=10, max_tokens=50_000), "claude-sonnet-4-5")
    assert small["thinking"]["budget_tokens"] == 1024 and small["max_tokens"] == 50_000
    off = params_for(req(reasoning_budget=0), "claude-sonnet-4-5")
    assert off["thinking"] == {"type": "disabled"}
    sampled = params_for(req(temperature=0.2, stop=("X",), service_tier="priority"), "m")
    assert sampled["extra_body"] == {"temperature": 0.2} and sampled["stop_sequences"] == ["X"]
    assert sampled["service_tier"] == "auto"
    assert "service_tier" not in params_for(req(service_tier="flex"), "m")  # no flex tier


def test_gemini_thinking_level_for_gemini_3_and_budget_otherwise():
    three = config_of(
        req(model="gemini-3-pro-preview", reasoning_effort="high", keep_thinking=True)
    )
    assert three.thinking_config is not None
    assert three.thinking_config.thinking_level.value == "HIGH"
    assert three.thinking_config.include_thoughts is True
    flash = config_of(req(model="gemini-2.5-flash", reasoning_effort="low", service_tier="flex"))
    assert flash.thinking_config is not None and flash.thinking_config.thinking_budget == 2048
    assert flash.service_tier is not None and flash.service_tier.value == "flex"
    plain = config_of(req(top_p=0.3, stop=("Z",), seed=4, service_tier="default"))
    assert (plain.top_p, plain.stop_sequences, plain.seed) == (0.3, ["Z"], 4)
    assert plain.service_tier is not None and plain.service_tier.value == "standard"
    assert plain.thinking_config is None


def test_served_tier_is_what_the_provider_said_else_what_the_api_offers():
    from nyxnb.providers.params import served_tier

    assert served_tier("openai", "flex", "flex") == "flex"
    assert served_tier("openai", "flex", None) == "flex"
    assert served_tier("anthropic", "flex", None) is None  # Anthropic sells no flex tier
    assert served_tier("anthropic", None, "standard") == "default"
    assert served_tier("offline", "priority", None) is None


def test_matrix_values_for_reasoning_and_tier_are_defaults_keys():
    from nyxnb.engine.iterate.variants import parse_matrix, variant_specs
    from nyxnb.spec import load_spec

    spec = load_spec({"name": "m", "steps": [{"name": "a", "prompt": "x"}]})
    matrix = parse_matrix(["reasoning=low,4000", "service_tier=flex,default"])
    variants = dict(variant_specs(spec, matrix))
    assert len(variants) == 4
    picked = [(s.defaults.reasoning, s.defaults.service_tier) for s in variants.values()]
    assert picked[0][0] is not None and picked[0][0].effort == "low"
    assert picked[2][0] is not None and picked[2][0].budget_tokens == 4000
    assert {tier for _, tier in picked} == {"flex", "default"}
