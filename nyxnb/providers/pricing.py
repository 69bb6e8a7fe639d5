"""Token prices from ``data/pricing.yaml`` (USD per million tokens) and cost arithmetic."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from nyxnb.errors import ConfigError
from nyxnb.paths import PACKAGE_ROOT, find_project_root


@dataclass(frozen=True)
class Price:
    """USD per million input, output and cached-input tokens."""

    input: float
    output: float
    cached_input: float

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """Cost in USD; ``input_tokens`` includes the cached ones."""
        uncached = max(input_tokens - cached_input_tokens, 0)
        return (
            uncached * self.input
            + cached_input_tokens * self.cached_input
            + output_tokens * self.output
        ) / 1_000_000


FREE = Price(0.0, 0.0, 0.0)


def pricing_path() -> Path:
    """``data/pricing.yaml`` of the project root, else of the package's checkout."""
    for root in (find_project_root(), PACKAGE_ROOT):
        if root is not None and (root / "data" / "pricing.yaml").is_file():
            return root / "data" / "pricing.yaml"
    raise ConfigError("data/pricing.yaml not found", hint="run nyxnb from its project checkout")


@cache
def load_prices(path: Path | None = None) -> dict[str, dict[str, Price]]:
    """The pricing table, by provider then model."""
    raw = yaml.safe_load((path or pricing_path()).read_text(encoding="utf-8")) or {}
    return {
        provider: {model: Price(**row) for model, row in models.items()}
        for provider, models in raw.items()
    }


def price_for(provider: str, model: str) -> Price:
    """The price of ``model`` at ``provider`` (its ``default`` row when unlisted; 0 if none)."""
    table = load_prices().get(provider, {})
    return table.get(model) or table.get("default") or FREE
