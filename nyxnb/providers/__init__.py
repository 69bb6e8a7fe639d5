"""LLM providers: one module per official SDK, the offline provider, errors, prices, the registry.

Each provider turns a :class:`CompletionRequest` into a :class:`Completion` or a classified
error. May import the ground modules only (``nyxnb.errors``, ``nyxnb.paths``).
"""

from nyxnb.providers.base import (
    ERROR_KINDS,
    FATAL_KINDS,
    REFUSED_KINDS,
    REJECTED_KINDS,
    TRANSIENT_KINDS,
    Completion,
    CompletionRequest,
    Message,
    Provider,
    ProviderOptions,
)
from nyxnb.providers.registry import create_provider, provider_class, provider_names, register

__all__ = [
    "ERROR_KINDS",
    "FATAL_KINDS",
    "REFUSED_KINDS",
    "REJECTED_KINDS",
    "TRANSIENT_KINDS",
    "Completion",
    "CompletionRequest",
    "Message",
    "Provider",
    "ProviderOptions",
    "create_provider",
    "provider_class",
    "provider_names",
    "register",
]
