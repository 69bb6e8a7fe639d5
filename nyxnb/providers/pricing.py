"""Token prices: the maintained ``genai-prices`` table, ``data/pricing.yaml`` for overrides and
models it lacks, and cost arithmetic with prompt-cache reads/writes and the batch tier.

Lookup order for ``(provider, model)``: an explicit row of ``data/pricing.yaml`` (an override),
then ``genai-prices``, then the yaml's ``default`` row of that provider, then free.  The batch
APIs of Anthropic, OpenAI and Gemini bill 50% of the live price, and the discount stacks with
prompt-cache prices (Anthropic documents it; OpenAI and Gemini bill cached batch input at the
cached rate halved), so :meth:`Price.cost` applies ``batch`` to every token class.
"""

from __future__ import annotations

from dataclasses import dataclass
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
def genai_price(provider: str, model: str) -> Price | None:
    """The price of ``model`` from ``genai-prices`` (None if it does not know the model)."""
    provider_id = _GENAI_PROVIDERS.get(provider)
    if provider_id is None or not model:
        return None
    from genai_prices import Usage, calc_price  # imported on first use: its table is large

    def rate(**tokens: int) -> float:
        usage = Usage(**tokens)  # type: ignore[arg-type]
        usd = calc_price(usage, model_ref=model, provider_id=provider_id).total_price
        return round(float(usd) * _MTOK / _SAMPLE, 6)

    try:
        base = rate(input_tokens=_SAMPLE)
    except LookupError:
        return None
    return Price(
        input=base,
        output=rate(output_tokens=_SAMPLE),
        cached_input=rate(input_tokens=_SAMPLE, cache_read_tokens=_SAMPLE),
        cache_write=rate(input_tokens=_SAMPLE, cache_write_tokens=_SAMPLE),
        source="genai-prices",
    )


def price_for(provider: str, model: str) -> Price:
    """The price of ``model`` at ``provider`` (override, genai-prices, ``default`` row, or 0)."""
    table = load_prices().get(provider, {})
    return table.get(model) or genai_price(provider, model) or table.get("default") or FREE
