"""What a call is sent to and how: named endpoints, reasoning, service tier and sampling.

Ground module (pydantic models only), shared by the spec (:mod:`nyxnb.spec`), the providers
(client construction and request parameters) and the engine::

    endpoints:
      local: {api: openai, base_url: "http://127.0.0.1:11434/v1", key_env: null}
      groq:  {api: openai, base_url: "https://api.groq.com/openai/v1", key_env: GROQ_API_KEY}
      azure: {api: azure-openai, endpoint: "https://me.openai.azure.com", api_version: "2024-10-21"}
      vertex: {api: google, vertexai: true, project: my-proj, location: us-central1}
      bedrock: {api: anthropic-bedrock, region: us-east-1}
    defaults: {reasoning: {effort: low}, service_tier: flex, temperature: 0.2}
    steps:
      - {name: plan, provider: ["local:llama3.1:8b", anthropic], reasoning: {budget_tokens: 4000}}

A spec holds the *names* of key variables only: a literal key is refused (secrets never reach
the store).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: API kinds an endpoint can speak; each maps to one SDK client.
API_KINDS = (
    "openai",
    "azure-openai",
    "anthropic",
    "anthropic-bedrock",
    "anthropic-vertex",
    "google",
)
ENDPOINT_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"  # no colon: ``endpoint:model`` splits at the first
EFFORTS = ("minimal", "low", "medium", "high")
TIERS = ("default", "flex", "priority")
_SECRET_FIELDS = ("api_key", "key", "token", "secret", "password", "aws_secret_key")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class EndpointSpec(_Model):
    """One named endpoint: an API kind at a URL with a key from a named variable.

    ``key_env`` names the variable holding the key (``null``: the endpoint takes none; omitted:
    the API's usual variable). ``prices_as`` is the ``genai-prices`` provider id to price its
    models by (omitted: OpenAI's, Anthropic's or Google's own prices for their official APIs;
    a custom ``base_url`` is free unless ``data/pricing.yaml`` has a row under the endpoint's
    name).
    """

    api: Literal[
        "openai", "azure-openai", "anthropic", "anthropic-bedrock", "anthropic-vertex", "google"
    ]
    base_url: str | None = None
    #: "" (written ``null``) means no key; stored as "" so a stored spec keeps it
    key_env: str = "default"
    model: str | None = None  # the endpoint's default model
    prices_as: str | None = None
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] | None = None
    # azure-openai
    endpoint: str | None = None
    api_version: str | None = None
    entra: bool = False  # Entra ID token from azure-identity's DefaultAzureCredential
    token_env: str | None = None  # a variable holding a bearer token (Entra, Vertex)
    # google (vertexai) and anthropic-vertex
    vertexai: bool = False
    project: str | None = None
    location: str | None = None
    # anthropic-bedrock (AWS credentials come from the usual AWS chain or ``profile``)
    region: str | None = None
    profile: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: object) -> object:
        if isinstance(data, dict) and "key_env" in data and data["key_env"] is None:
            data = {**data, "key_env": ""}
        if isinstance(data, dict):
            for name in _SECRET_FIELDS:
                if name in data:
                    raise ValueError(
                        f"`{name}` would store a secret in the spec; put the key in an "
                        "environment variable and name it with `key_env`"
                    )
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> EndpointSpec:
        if self.api == "azure-openai" and not (self.endpoint or self.base_url):
            raise ValueError(
                "an azure-openai endpoint needs `endpoint: https://NAME.openai.azure.com`"
            )
        if self.api == "azure-openai" and not self.api_version:
            raise ValueError("an azure-openai endpoint needs `api_version` (e.g. 2024-10-21)")
        if self.api == "anthropic-vertex" or (self.api == "google" and self.vertexai):
            if not (self.project and self.location):
                raise ValueError("a Vertex AI endpoint needs `project` and `location`")
        if self.api == "anthropic-bedrock" and not self.region:
            raise ValueError("an anthropic-bedrock endpoint needs `region` (e.g. us-east-1)")
        return self


class ReasoningSpec(_Model):
    """How hard a reasoning model thinks: an ``effort`` or a thinking ``budget_tokens``.

    Shorthands: ``reasoning: high`` is ``{effort: high}``, ``reasoning: 4000`` is
    ``{budget_tokens: 4000}`` (so ``--matrix reasoning=low,high`` works).
    """

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"budget_tokens": data}
        if isinstance(data, str):
            return {"budget_tokens": int(data)} if data.isdigit() else {"effort": data}
        return data

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    budget_tokens: int | None = Field(default=None, ge=0, le=128_000)

    @model_validator(mode="after")
    def _one(self) -> ReasoningSpec:
        if (self.effort is None) == (self.budget_tokens is None):
            raise ValueError("reasoning takes exactly one of `effort` or `budget_tokens`")
        return self


class CallSettings(BaseModel):
    """Per-call knobs a step (or ``defaults``) may set; None inherits.

    ``temperature``, ``top_p``, ``stop`` and ``seed`` reach every API that accepts them
    (Anthropic has no seed); ``service_tier`` reaches OpenAI and Gemini; all are part of the
    request's cache key.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    reasoning: ReasoningSpec | None = None
    keep_thinking: bool | None = None
    service_tier: Literal["default", "flex", "priority"] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = Field(default=None, max_length=4)
    seed: int | None = None


CALL_FIELDS = tuple(CallSettings.model_fields)
