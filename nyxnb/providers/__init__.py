"""LLM providers over their official SDKs, the offline provider, and the registry."""

from .base import (
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
from .registry import create_provider, provider_class, provider_names, register

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
