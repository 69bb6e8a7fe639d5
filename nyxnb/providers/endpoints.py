"""Named endpoints: where they are declared, what a chain entry names, and each one's SDK client.

Endpoints come from three places, later ones winning by name: the user's file
(``$XDG_CONFIG_HOME/nyxnb/nyxnb.yaml``, default ``~/.config/nyxnb/nyxnb.yaml``;
``NYXNB_USER_CONFIG`` overrides the path), the project's ``nyxnb.yaml`` (at the project root, found
like the store), and the spec's own ``endpoints:`` block. Each file holds
``endpoints: {NAME: {api: ..., ...}}``. The built-in ``anthropic``, ``openai``, ``google`` and
``offline`` need no declaration (their SDKs read ``*_BASE_URL`` and the usual key variables);
declaring one of those names replaces it.

A chain entry is ``NAME`` or ``NAME:MODEL`` (split at the first colon; the model may hold more).
The endpoint's name is the provider's name everywhere after that: in the ledger, the rate
budget, the circuit breaker and the response cache, so two endpoints never share any of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nyxnb.callspec import EndpointSpec
from nyxnb.errors import ConfigError, MissingExtra, MissingKey, UnknownEndpoint
from nyxnb.paths import find_project_root
from nyxnb.providers.base import Endpoint, Provider

#: API kind -> the provider class (registry name) that speaks it.
API_PROVIDER = {
    "openai": "openai",
    "azure-openai": "openai",
    "anthropic": "anthropic",
    "anthropic-bedrock": "anthropic",
    "anthropic-vertex": "anthropic",
    "google": "google",
}
BUILTIN = ("anthropic", "google", "openai", "offline")
#: A key-less endpoint (``key_env: null``) still sends this: the openai SDK insists on a key,
#: and local servers (Ollama, vLLM, llama.cpp) ignore it. It is not a secret.
NO_KEY = "no-key"

Table = Mapping[str, Endpoint]
GEMINI_API_URL = "https://generativelanguage.googleapis.com/"


def user_file() -> Path:
    """The user's config file (it need not exist)."""
    if os.environ.get("NYXNB_USER_CONFIG"):
        return Path(os.environ["NYXNB_USER_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nyxnb" / "nyxnb.yaml"


def project_file() -> Path | None:
    """The project's ``nyxnb.yaml`` beside ``data/`` (None outside a project)."""
    root = find_project_root()
    return None if root is None else root / "nyxnb.yaml"


def load_file(path: Path | None) -> dict[str, EndpointSpec]:
    """The ``endpoints:`` of a config file ({} if it does not exist)."""
    if path is None or not path.is_file():
        return {}
    return _load_cached(path, path.stat().st_mtime_ns)


@cache
def _load_cached(path: Path, _mtime: int) -> dict[str, EndpointSpec]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        raw = data.get("endpoints") or {} if isinstance(data, dict) else {}
        return {str(name): EndpointSpec.model_validate(body) for name, body in raw.items()}
    except (yaml.YAMLError, ValidationError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = first[-1] if first else type(exc).__name__
        raise ConfigError(
            f"{path}: invalid endpoints: {detail}", hint="see README 'Models and endpoints'"
        ) from None


def endpoint_table(spec_endpoints: Mapping[str, EndpointSpec] | None = None) -> dict[str, Endpoint]:
    """Every declared endpoint: the user's file, then the project's, then the spec's."""
    merged: dict[str, EndpointSpec] = {}
    merged.update(load_file(user_file()))
    merged.update(load_file(project_file()))
    merged.update(spec_endpoints or {})
    return {name: Endpoint(name, spec) for name, spec in merged.items()}


def workflow_endpoints(stored_spec: Mapping[str, Any] | None) -> dict[str, Endpoint]:
    """The endpoint table of a stored workflow spec (its ``endpoints:`` over the files')."""
    raw = (stored_spec or {}).get("endpoints") or {}
    return endpoint_table({n: EndpointSpec.model_validate(b) for n, b in raw.items()})


def cache_identity(name: str, table: Table | None) -> str:
    """What a cached answer is keyed by: a built-in's name, or an endpoint's name and place.

    Pointing ``local`` at another server (an Ollama swapped for a vLLM) is a new cache.
    """
    endpoint = (table or {}).get(name)
    if endpoint is None:
        return name
    spec = endpoint.spec
    place = spec.base_url or spec.endpoint or spec.region or f"{spec.project}/{spec.location}"
    return f"{name}@{spec.api}:{place}"


def split_entry(entry: str) -> tuple[str, str | None]:
    """``"local:llama3.1:8b"`` -> ``("local", "llama3.1:8b")`` (the first colon splits)."""
    name, _, model = entry.partition(":")
    return name, model or None


def resolve(name: str, table: Table | None, registered: list[str]) -> tuple[str, Endpoint | None]:
    """(registry name of the provider class, the endpoint or None for a built-in provider)."""
    if table and name in table:
        endpoint = table[name]
        return API_PROVIDER[endpoint.spec.api], endpoint
    if name in registered:
        return name, None
    raise UnknownEndpoint(name, [*registered, *(table or {})])


def check_extras(endpoint: Endpoint) -> None:
    """Raise :class:`MissingExtra` now if the endpoint's SDK needs a package not installed."""
    spec = endpoint.spec
    if spec.api == "anthropic-bedrock":
        _require(endpoint.name, "boto3", "boto3", "bedrock")
    elif spec.api == "anthropic-vertex" or spec.vertexai:
        _require(endpoint.name, "google.auth", "google-auth", "vertex")
    elif spec.api == "azure-openai" and spec.entra:
        _require(endpoint.name, "azure.identity", "azure-identity", "azure")


# -- clients ------------------------------------------------------------------------------------


def api_key_or_placeholder(provider: Provider) -> str:
    """The endpoint's key from its variable; the placeholder for a key-less endpoint."""
    if not provider.key_env:
        return NO_KEY
    return provider.api_key()


def openai_client(provider: Provider, timeout: Any, max_retries: int = 0) -> Any:
    """``AsyncOpenAI`` (or ``AsyncAzureOpenAI``) for the provider's endpoint."""
    import openai

    endpoint = provider.endpoint
    if endpoint is None:
        return openai.AsyncOpenAI(
            api_key=provider.api_key(), max_retries=max_retries, timeout=timeout
        )
    spec = endpoint.spec
    if spec.api == "azure-openai":
        return _azure_client(provider, spec, timeout, max_retries)
    return openai.AsyncOpenAI(
        api_key=api_key_or_placeholder(provider),
        base_url=spec.base_url or "https://api.openai.com/v1",
        max_retries=max_retries,
        timeout=timeout,
    )


def _azure_client(provider: Provider, spec: EndpointSpec, timeout: Any, max_retries: int) -> Any:
    import openai

    auth: dict[str, Any] = {}
    if spec.entra:
        auth["azure_ad_token_provider"] = _entra_token_provider(provider.name)
    elif spec.token_env:
        auth["azure_ad_token"] = _token_from(provider.name, spec.token_env)
    else:
        auth["api_key"] = provider.api_key()
    place = {"azure_endpoint": spec.endpoint} if spec.endpoint else {"base_url": spec.base_url}
    return openai.AsyncAzureOpenAI(
        api_version=spec.api_version,
        max_retries=max_retries,
        timeout=timeout,
        **place,
        **auth,
    )


def _entra_token_provider(name: str) -> Any:
    try:
        from azure.identity.aio import (  # type: ignore[import-not-found]
            DefaultAzureCredential,
            get_bearer_token_provider,
        )
    except ImportError:
        raise MissingExtra(name, "azure-identity", "azure") from None
    scope = "https://cognitiveservices.azure.com/.default"
    return get_bearer_token_provider(DefaultAzureCredential(), scope)


def _token_from(name: str, variable: str) -> str:
    token = os.environ.get(variable)
    if not token:
        raise MissingKey(name, (variable,))
    return token


def anthropic_client(provider: Provider, timeout: Any, max_retries: int = 0) -> Any:
    """``AsyncAnthropic``, ``AsyncAnthropicBedrock`` or ``AsyncAnthropicVertex``."""
    import anthropic

    endpoint = provider.endpoint
    spec = endpoint.spec if endpoint else None
    common: dict[str, Any] = {"max_retries": max_retries, "timeout": timeout}
    if spec is not None and spec.base_url:
        common["base_url"] = spec.base_url
    if spec is None:  # the built-in: the SDK reads ANTHROPIC_BASE_URL
        return anthropic.AsyncAnthropic(api_key=provider.api_key(), **common)
    if spec.api == "anthropic":  # a named endpoint never follows ANTHROPIC_BASE_URL
        common.setdefault("base_url", "https://api.anthropic.com")
        return anthropic.AsyncAnthropic(api_key=api_key_or_placeholder(provider), **common)
    if spec.api == "anthropic-bedrock":
        _require(provider.name, "boto3", "boto3", "bedrock")
        return anthropic.AsyncAnthropicBedrock(
            aws_region=spec.region, aws_profile=spec.profile, **common
        )
    _require(provider.name, "google.auth", "google-auth", "vertex")
    token = _token_from(provider.name, spec.token_env) if spec.token_env else None
    return anthropic.AsyncAnthropicVertex(
        region=str(spec.location), project_id=str(spec.project), access_token=token, **common
    )


def google_client(provider: Provider, http_options: Any) -> Any:
    """``genai.Client`` for the Gemini API, or for Vertex AI (``vertexai: true``)."""
    from google import genai

    spec = provider.endpoint.spec if provider.endpoint else None
    if spec is not None and (spec.base_url or not spec.vertexai):  # never GOOGLE_GEMINI_BASE_URL
        base_url = spec.base_url or GEMINI_API_URL
        http_options = http_options.model_copy(update={"base_url": base_url})
    if spec is None or not spec.vertexai:
        key = provider.api_key() if spec is None else api_key_or_placeholder(provider)
        return genai.Client(api_key=key, http_options=http_options)
    _require(provider.name, "google.auth", "google-auth", "vertex")
    credentials = None
    if spec.token_env:
        from google.oauth2.credentials import Credentials

        credentials = Credentials(token=_token_from(provider.name, spec.token_env))
    return genai.Client(
        vertexai=True,
        project=spec.project,
        location=spec.location,
        credentials=credentials,
        http_options=http_options,
    )


def _require(endpoint: str, module: str, package: str, extra: str) -> None:
    """Import ``module`` or raise the one-line fix naming the extra to install."""
    try:
        __import__(module)
    except ImportError:
        raise MissingExtra(endpoint, package, extra) from None
