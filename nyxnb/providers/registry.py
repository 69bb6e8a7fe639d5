"""Provider registry: names to provider classes, imported lazily (SDK imports are slow)."""

from __future__ import annotations

from importlib import import_module

from nyxnb.errors import UnknownEndpoint
from nyxnb.providers.base import Provider, ProviderOptions
from nyxnb.providers.batch_base import BatchApi
from nyxnb.providers.endpoints import Table, check_extras, resolve

_REGISTRY: dict[str, str | type[Provider]] = {
    "offline": "nyxnb.providers.offline:OfflineProvider",
    "anthropic": "nyxnb.providers.anthropic:AnthropicProvider",
    "google": "nyxnb.providers.google:GoogleProvider",
    "openai": "nyxnb.providers.openai:OpenAIProvider",
}


def register(name: str, provider: str | type[Provider]) -> None:
    """Register a provider class (or a lazy ``"module:Class"`` path) under ``name``."""
    _REGISTRY[name] = provider


def provider_names() -> list[str]:
    """Every registered provider name, sorted."""
    return sorted(_REGISTRY)


def provider_class(name: str, endpoints: Table | None = None) -> type[Provider]:
    """The class registered as ``name`` (or speaking endpoint ``name``'s API)."""
    if endpoints and name in endpoints:
        name = resolve(name, endpoints, list(_REGISTRY))[0]
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise UnknownEndpoint(name, [*_REGISTRY, *(endpoints or {})]) from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(import_module(module), attr)
        _REGISTRY[name] = entry
    return entry  # type: ignore[return-value]


def create_provider(
    name: str,
    options: ProviderOptions | dict[str, object] | None = None,
    endpoints: Table | None = None,
) -> Provider:
    """Instantiate the provider or named endpoint ``name`` with validated options.

    ``endpoints`` (see :func:`nyxnb.providers.endpoints.endpoint_table`) names the endpoints a
    chain may use; an unknown name raises :class:`~nyxnb.errors.UnknownEndpoint`.
    """
    kind, endpoint = resolve(name, endpoints, list(_REGISTRY))
    if endpoint is not None:
        check_extras(endpoint)
    cls = provider_class(kind)
    if isinstance(options, dict):
        options = cls.Options.model_validate(options)
    return cls(options, endpoint) if endpoint is not None else cls(options)


def default_model(name: str, endpoints: Table | None = None) -> str:
    """The model an entry without ``:MODEL`` uses at provider or endpoint ``name``."""
    if endpoints and name in endpoints and endpoints[name].spec.model:
        return endpoints[name].spec.model or ""
    return provider_class(name, endpoints).default_model


_BATCH_APIS = {
    "offline": "nyxnb.providers.batch_offline:OfflineBatches",
    "anthropic": "nyxnb.providers.batch_anthropic:AnthropicBatches",
    "openai": "nyxnb.providers.batch_openai:OpenAIBatches",
    "google": "nyxnb.providers.batch_google:GoogleBatches",
}


def batch_api(provider: Provider) -> BatchApi | None:
    """The batch API of a provider instance, or None if nyxnb has none for it.

    A named endpoint has its API's batch API only where that API is the vendor's own
    (``api: openai``/``anthropic``/``google`` without Vertex); Azure, Bedrock and Vertex batch
    through storage buckets nyxnb does not drive, so their fan-outs run live.
    """
    spec = provider.endpoint.spec if provider.endpoint is not None else None
    if spec is not None and (spec.api not in ("openai", "anthropic", "google") or spec.vertexai):
        return None
    entry = _BATCH_APIS.get(type(provider).name)
    if entry is None:
        return None
    module, _, attr = entry.partition(":")
    cls: type[BatchApi] = getattr(import_module(module), attr)
    return cls(provider)
