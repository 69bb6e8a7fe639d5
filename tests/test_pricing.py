"""Prices from genai-prices, data/pricing.yaml overrides, cache and batch arithmetic."""

from __future__ import annotations

import pytest

from nyxnb.providers.pricing import BATCH_DISCOUNT, Price, genai_price, load_prices, price_for


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-sonnet-4-5"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1-mini"),
        ("google", "gemini-2.5-flash"),
        ("google", "gemini-2.5-pro"),
    ],
)
def test_known_models_come_from_genai_prices(provider, model):
    price = price_for(provider, model)
    assert price.source == "genai-prices"
    assert 0 < price.cached_input < price.input < price.output


def test_anthropic_cache_prices_as_anthropic_bills_them():
    price = price_for("anthropic", "claude-haiku-4-5")
    assert (price.input, price.output) == (1.0, 5.0)
    assert price.cached_input == pytest.approx(0.1 * price.input)  # reads: 10%
    assert price.cache_write == pytest.approx(1.25 * price.input)  # 5-minute writes: 125%


def test_long_context_tier_does_not_leak_into_the_rate():
    # Sonnet 4.5 costs $6/M above 200k tokens; the per-call rate is the base $3/M
    assert price_for("anthropic", "claude-sonnet-4-5").input == 3.0


def test_unknown_and_offline_models_fall_back_to_the_yaml():
    assert genai_price("anthropic", "claude-from-the-future") is None
    assert price_for("anthropic", "claude-from-the-future") == load_prices()["anthropic"]["default"]
    assert price_for("offline", "offline-1").cost(1000, 1000) == 0.0


def test_cost_arithmetic_stacks_batch_and_cache():
    price = Price(input=1.0, output=5.0, cached_input=0.1, cache_write=1.25)
    tokens = {"cached_input_tokens": 1_000_000, "cache_write_tokens": 1_000_000}
    live = price.cost(3_000_000, 1_000_000, **tokens)
    assert live == pytest.approx(1.0 + 0.1 + 1.25 + 5.0)
    batch = price.cost(3_000_000, 1_000_000, **tokens, batch=True)
    assert batch == pytest.approx(BATCH_DISCOUNT * live)


def test_yaml_row_overrides_genai_prices(tmp_path, monkeypatch):
    table = tmp_path / "pricing.yaml"
    table.write_text("openai:\n  gpt-4o-mini: {input: 9, output: 9, cached_input: 9}\n")
    monkeypatch.setattr(
        "nyxnb.providers.pricing.load_prices", lambda path=None: load_prices.__wrapped__(table)
    )
    assert price_for("openai", "gpt-4o-mini").input == 9


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini"])
def test_openai_batch_rates_come_from_genai_prices(model):
    price = price_for("openai", model)
    batch = price.batch_rates
    assert price.source == "genai-prices" and batch is not None
    assert batch.input == pytest.approx(BATCH_DISCOUNT * price.input)
    assert batch.output == pytest.approx(BATCH_DISCOUNT * price.output)
    assert 0 < batch.cached_input <= price.cached_input < price.input


def test_batch_cached_input_priced_as_the_provider_bills_it():
    # gpt-4o-mini: a cached token in a batch costs the cached rate, not half of it
    mini = price_for("openai", "gpt-4o-mini")
    assert mini.batch_rates is not None and mini.batch_rates.cached_input == mini.cached_input
    assert mini.cost(2_000_000, 0, 1_000_000, batch=True) == pytest.approx(0.075 + 0.075)
    # gpt-5-mini and Claude: the batch discount stacks with the cache discount
    for provider, model in (("openai", "gpt-5-mini"), ("anthropic", "claude-haiku-4-5")):
        price = price_for(provider, model)
        tokens = (3_000_000, 1_000_000, 1_000_000, 1_000_000 if provider == "anthropic" else 0)
        assert price.cost(*tokens, batch=True) == pytest.approx(0.5 * price.cost(*tokens))
