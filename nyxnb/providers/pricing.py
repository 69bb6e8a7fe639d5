"""Token prices: the maintained ``genai-prices`` table, ``data/pricing.yaml`` for overrides and
models it lacks, and cost arithmetic with prompt-cache reads/writes and the batch tier.

Lookup order for ``(provider, model)``: an explicit row of ``data/pricing.yaml`` (an override),
then ``genai-prices``, then the yaml's ``default`` row of that provider, then free.  The batch
APIs of Anthropic, OpenAI and Gemini bill 50% of the live price for input and output, but how
the batch discount meets the prompt-cache price differs by provider and model: Anthropic halves
cache reads and writes too, while for OpenAI's gpt-4o / gpt-4.1 families and Gemini 2.5 a cached
batch token costs the live cached rate (or the batch input rate), not half of it.  So a model
``genai-prices`` knows carries its own batch rates (its ``processing: batch`` price variants) in
:attr:`Price.batch_rates`; any other price applies the ``batch`` share to every token class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import yaml

from nyxnb.errors import ConfigError
from nyxnb.paths import PACKAGE_ROOT, find_project_root

#: The batch APIs' share of the live price (Anthropic, OpenAI and Gemini all sell at 50%).
BATCH_DISCOUNT = 0.5
_MTOK = 1_000_000
#: Rates are sampled at this many tokens, under the long-context tiers (>200k) some models have.
_SAMPLE = 100_000


@dataclass(frozen=True)
class Price:
    """USD per million tokens: input, output, cache reads, cache writes; and the batch share."""

    input: float
    output: float
    cached_input: float
    cache_write: float | None = None  # None: same as ``input`` (OpenAI/Gemini caching is implicit)
    batch: float = BATCH_DISCOUNT
    source: str = "pricing.yaml"
    #: The provider's own batch prices (genai-prices); None: ``batch`` times these rates.
    batch_rates: Price | None = None

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        *,
        batch: bool = False,
    ) -> float:
        """Cost in USD; ``input_tokens`` includes the cache reads and writes."""
        if batch and self.batch_rates is not None:
            tokens = (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens)
            return self.batch_rates.cost(*tokens)
        uncached = max(input_tokens - cached_input_tokens - cache_write_tokens, 0)
        write = self.input if self.cache_write is None else self.cache_write
        usd = (
            uncached * self.input
            + cached_input_tokens * self.cached_input
            + cache_write_tokens * write
            + output_tokens * self.output
        ) / _MTOK
        return usd * self.batch if batch else usd


FREE = Price(0.0, 0.0, 0.0, 0.0, source="none")


def pricing_path() -> Path:
    """``data/pricing.yaml`` of the project root, else of the package's checkout."""
    for root in (find_project_root(), PACKAGE_ROOT):
        if root is not None and (root / "data" / "pricing.yaml").is_file():
            return root / "data" / "pricing.yaml"
    raise ConfigError("data/pricing.yaml not found", hint="run nyxnb from its project checkout")


@cache
def load_prices(path: Path | None = None) -> dict[str, dict[str, Price]]:
    """The override table of ``data/pricing.yaml``, by provider then model."""
    raw = yaml.safe_load((path or pricing_path()).read_text(encoding="utf-8")) or {}
    return {
        provider: {model: Price(**row) for model, row in (models or {}).items()}
        for provider, models in raw.items()
    }


#: nyxnb provider name -> genai-prices provider id.
_GENAI_PROVIDERS = {"anthropic": "anthropic", "openai": "openai", "google": "google"}


@cache
def genai_price(provider_id: str | None, model: str, tier: str | None = None) -> Price | None:
    """The price of ``model`` from ``genai-prices`` (None if it does not know the model).

    ``provider_id`` is a genai-prices provider id; ``tier`` a service tier (``flex``,
    ``priority``) whose own rates genai-prices knows for some models (else the standard ones).
    """
    if provider_id is None or not model:
        return None
    live_context = (("service_tier", tier),) if tier and tier != "default" else None
    try:
        live = _genai_rates(provider_id, model, live_context)
    except LookupError:
        return None
    batch = _genai_rates(provider_id, model, _BATCH_CONTEXT)
    return replace(live, batch_rates=None if batch == live else batch)


#: genai-prices' price context of a batch-API call.
_BATCH_CONTEXT = (("processing", "batch"),)


def _genai_rates(
    provider_id: str, model: str, context: tuple[tuple[str, str], ...] | None
) -> Price:
    """Per-token-class rates of ``model`` from genai-prices (live, or in ``context``)."""
    from genai_prices import Usage, calc_price  # imported on first use: its table is large

    def rate(**tokens: int) -> float:
        usage = Usage(**tokens)  # type: ignore[arg-type]
        found = calc_price(
            usage,
            model_ref=model,
            provider_id=provider_id,
            price_context=dict(context) if context else None,
        )
        return round(float(found.total_price) * _MTOK / _SAMPLE, 6)

    return Price(
        input=rate(input_tokens=_SAMPLE),
        output=rate(output_tokens=_SAMPLE),
        cached_input=rate(input_tokens=_SAMPLE, cache_read_tokens=_SAMPLE),
        cache_write=rate(input_tokens=_SAMPLE, cache_write_tokens=_SAMPLE),
        source="genai-prices",
    )


#: ``price_for(prices_as=BY_NAME)``: look the model up under the built-in provider of that name.
BY_NAME: object = object()


def price_for(
    provider: str, model: str, *, prices_as: str | None | object = BY_NAME, tier: str | None = None
) -> Price:
    """The price of ``model`` at ``provider`` (override, genai-prices, ``default`` row, or 0).

    ``provider`` is the endpoint's name (its rows in ``data/pricing.yaml``); ``prices_as`` the
    genai-prices id to look the model up under (default: the built-in provider of that name;
    None: none, so a local endpoint is free unless the yaml prices it); ``tier`` the service
    tier the call was served at.
    """
    table = load_prices().get(provider, {})
    provider_id = _GENAI_PROVIDERS.get(provider) if prices_as is BY_NAME else prices_as
    known = genai_price(provider_id, model, tier)  # type: ignore[arg-type]
    return table.get(model) or known or table.get("default") or FREE
