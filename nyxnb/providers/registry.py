"""Provider registry: names to provider classes, imported lazily (SDK imports are slow)."""

from __future__ import annotations

from importlib import import_module

from nyxnb.errors import UnknownProvider
from nyxnb.providers.base import Provider, ProviderOptions
from nyxnb.providers.batch_base import BatchApi

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


def provider_class(name: str) -> type[Provider]:
    """The class registered as ``name``, or :class:`UnknownProvider`."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise UnknownProvider(name, list(_REGISTRY)) from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(import_module(module), attr)
        _REGISTRY[name] = entry
    return entry  # type: ignore[return-value]


def create_provider(
    name: str, options: ProviderOptions | dict[str, object] | None = None
) -> Provider:
    """Instantiate the provider ``name`` with validated options."""
    cls = provider_class(name)
    if isinstance(options, dict):
        options = cls.Options.model_validate(options)
    return cls(options)


_BATCH_APIS = {
    "offline": "nyxnb.providers.batch_offline:OfflineBatches",
    "anthropic": "nyxnb.providers.batch_anthropic:AnthropicBatches",
    "openai": "nyxnb.providers.batch_openai:OpenAIBatches",
    "google": "nyxnb.providers.batch_google:GoogleBatches",
}


def batch_api(provider: Provider) -> BatchApi | None:
    """The batch API of a provider instance, or None if nyxnb has none for it."""
    entry = _BATCH_APIS.get(provider.name)
    if entry is None:
        return None
    module, _, attr = entry.partition(":")
    cls: type[BatchApi] = getattr(import_module(module), attr)
    return cls(provider)
