"""What each endpoint serves: its list-models API, whether its key is set, and known prices.

``nyxnb models [ENDPOINT]`` prints this. An endpoint that cannot be listed (no key, a server
that is down, an API without a list call) says why in its ``error`` instead of failing the rest.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from nyxnb.errors import NyxError, one_line
from nyxnb.providers.base import Provider
from nyxnb.providers.endpoints import BUILTIN, Table
from nyxnb.providers.pricing import price_for
from nyxnb.providers.registry import create_provider


@dataclass(frozen=True)
class ModelRow:
    """One model an endpoint serves, with USD per million tokens where a price is known."""

    endpoint: str
    api: str
    model: str
    key: str  # "set", "missing" or "none needed"
    input_usd_mtok: float | None
    output_usd_mtok: float | None


@dataclass(frozen=True)
class EndpointModels:
    """The models of one endpoint, or why they could not be listed."""

    endpoint: str
    api: str
    key: str
    models: tuple[ModelRow, ...]
    error: str | None = None


def key_state(provider: Provider) -> str:
    """Whether the endpoint's key variable is set (never the key itself)."""
    if not provider.key_env:
        return "none needed"
    return "set" if any(os.environ.get(v) for v in provider.key_env) else "missing"


def api_of(provider: Provider) -> str:
    """The API kind an endpoint speaks."""
    return provider.endpoint.spec.api if provider.endpoint else type(provider).name


async def model_ids(provider: Provider) -> list[str]:
    """The ids the endpoint's list-models API returns."""
    kind = type(provider).name
    if kind == "offline":
        return [provider.default_model]
    client = provider.client()
    if kind == "google":
        pager = await client.aio.models.list()
        return [str(m.name).removeprefix("models/") async for m in pager]
    return [m.id async for m in client.models.list()]


def _row(provider: Provider, model: str, key: str) -> ModelRow:
    price = price_for(provider.name, model, prices_as=provider.prices_as)
    known = price.source != "none"
    return ModelRow(
        provider.name,
        api_of(provider),
        model,
        key,
        price.input if known else None,
        price.output if known else None,
    )


async def endpoint_models(name: str, endpoints: Table) -> EndpointModels:
    """List one endpoint's models (its failure as ``error``, never raised)."""
    try:
        provider = create_provider(name, None, endpoints)
    except NyxError as exc:  # an unknown endpoint, a missing SDK extra
        spec = endpoints.get(name)
        return EndpointModels(name, spec.spec.api if spec else "?", "?", (), one_line(exc, 200))
    key = key_state(provider)
    try:
        ids = await model_ids(provider)
    except Exception as exc:  # noqa: BLE001 - reported per endpoint
        return EndpointModels(name, api_of(provider), key, (), one_line(exc, 200))
    finally:
        await provider.aclose()
    rows = tuple(_row(provider, m, key) for m in sorted(set(ids)))
    return EndpointModels(name, api_of(provider), key, rows)


async def catalog(endpoints: Table, only: str | None = None) -> list[EndpointModels]:
    """Every endpoint's models (built-in providers first), or only endpoint ``only``."""
    names = [only] if only else [*(n for n in BUILTIN if n not in endpoints), *endpoints]
    return list(await asyncio.gather(*(endpoint_models(n, endpoints) for n in names)))
