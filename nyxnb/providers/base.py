"""The provider interface: a name, its key's env vars, an options model and one async method."""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from nyxnb.callspec import EndpointSpec
from nyxnb.errors import ErrorKind as K
from nyxnb.errors import MissingKey
from nyxnb.providers.streaming import (
    DEFAULT_IDLE_S,
    REASONING_FIRST_BYTE_S,
    Watch,
    is_reasoning_model,
)
from nyxnb.rates import RateInfo

#: Every error kind a provider call can fail with, and what the fallback chain does about it.
REFUSED_KINDS = frozenset({K.EXHAUSTED, K.AUTH, K.NOT_FOUND})  # mark provider down, move on
TRANSIENT_KINDS = frozenset({K.RATE_LIMITED, K.OVERLOADED, K.SERVER, K.TIMEOUT, K.CONNECTION})
REJECTED_KINDS = frozenset({K.TRUNCATED, K.REFUSED, K.EMPTY, K.INVALID_OUTPUT})  # unusable
FATAL_KINDS = frozenset({K.BAD_REQUEST, K.CONTEXT_TOO_LONG})  # fails everywhere alike
ERROR_KINDS = REFUSED_KINDS | TRANSIENT_KINDS | REJECTED_KINDS | FATAL_KINDS

#: Seconds a call may wait for its answer's first byte unless the spec or CLI says otherwise.
DEFAULT_TIMEOUT_S = 30.0

#: Normalised stop reasons a provider returns in :class:`Completion`.
STOP_END, STOP_MAX_TOKENS, STOP_REFUSAL = "end", "max_tokens", "refusal"


@dataclass(frozen=True)
class Message:
    """One chat message (``role`` is ``user`` or ``assistant``)."""

    role: str
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    """What the engine asks a provider for; ``model`` None means the provider's default."""

    system: str
    messages: tuple[Message, ...]
    model: str | None = None
    max_tokens: int = 2048
    temperature: float | None = None
    #: Leading characters of the first user message shared by every item of a fan-out: a
    #: prompt-cache prefix (Anthropic marks it with ``cache_control``; others cache implicitly).
    shared_prefix: int = 0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    #: ``minimal|low|medium|high``, or a thinking budget in tokens (mapped per API: params.py)
    reasoning_effort: str | None = None
    reasoning_budget: int | None = None
    keep_thinking: bool = False
    service_tier: str | None = None  # default | flex | priority (where the API has tiers)
    #: A JSON Schema the answer must match (the step's ``output_schema``): each provider's
    #: native structured-output mode asks for it and the fallback chain validates the answer.
    output_schema: Mapping[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def of(cls, system: str, prompt: str, **kw: object) -> CompletionRequest:
        """A single-turn request."""
        return cls(system=system, messages=(Message("user", prompt),), **kw)  # type: ignore[arg-type]

    def with_prompt(self, prompt: str) -> CompletionRequest:
        """This request as a single turn asking ``prompt``; every other field is kept.

        A fan-out builds each item's request from its step's this way: a field-by-field
        ``replace`` cost more than the rest of building the request.
        """
        request = object.__new__(CompletionRequest)
        request.__dict__.update(self.__dict__)
        object.__setattr__(request, "messages", (Message("user", prompt),))
        return request

    def with_model(self, model: str | None) -> CompletionRequest:
        """This request for ``model`` (None: unchanged); every other field is kept as it is.

        The one way a chain entry (``anthropic:claude-...``) or a batch retargets a request:
        rebuilding it field by field dropped ``shared_prefix`` and with it the prompt cache.
        """
        return self if model is None or model == self.model else replace(self, model=model)


@dataclass(frozen=True)
class Completion:
    """A provider's answer, normalised across SDKs."""

    text: str
    stop_reason: str
    input_tokens: int
    output_tokens: int
    model: str
    provider: str
    cached_input_tokens: int = 0  # prompt-cache reads (included in input_tokens)
    cache_write_tokens: int = 0  # prompt-cache writes (included in input_tokens)
    raw_stop_reason: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False)
    #: what the answer's rate-limit headers said (None: none sent)
    rate: RateInfo | None = field(default=None, compare=False)
    #: tokens spent thinking (Anthropic thinking, OpenAI reasoning, Gemini thoughts), included
    #: in ``output_tokens``
    reasoning_tokens: int = 0
    thinking: str = ""  # the thinking text (the engine keeps it only with keep_thinking)
    service_tier: str | None = None  # the tier the provider says it served (or was asked)


@dataclass(frozen=True)
class Endpoint:
    """A named endpoint: its name (the provider name in chains and the ledger) and its spec."""

    name: str
    spec: EndpointSpec

    def key_vars(self, api_default: tuple[str, ...]) -> tuple[str, ...]:
        """The variables its key is read from (none for AWS/Google credentials or ``null``)."""
        if self.spec.api in ("anthropic-bedrock", "anthropic-vertex") or self.spec.vertexai:
            return ()
        if self.spec.key_env == "default":
            return api_default
        return (self.spec.key_env,) if self.spec.key_env else ()


class ProviderOptions(BaseModel):
    """Options every provider accepts; providers subclass to add their own.

    Every live call is streamed.  ``timeout_s`` bounds the wait for the first byte of an answer
    (a provider silent that long is hung: the call is given up and the fallback chain moves
    on); unless set, a known reasoning model (or a step with a reasoning setting) waits
    :data:`~nyxnb.providers.streaming.REASONING_FIRST_BYTE_S`.  ``idle_s`` bounds each silence
    between two chunks; the whole answer may take as long as it takes.  ``connect_timeout_s``
    bounds the connection.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=3600)
    idle_s: float = Field(default=DEFAULT_IDLE_S, gt=0, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)

    def first_byte_s(self, model: str, reasoning: bool = False) -> float:
        """Seconds to wait for the first byte of ``model``'s answer."""
        if "timeout_s" in self.model_fields_set:
            return self.timeout_s
        if reasoning or is_reasoning_model(model):
            return max(self.timeout_s, REASONING_FIRST_BYTE_S)
        return self.timeout_s

    def stream_read_s(self) -> float:
        """A streamed call's SDK read timeout: a backstop past every timeout of :class:`Watch`."""
        return max(self.timeout_s, REASONING_FIRST_BYTE_S, self.idle_s) + 5.0

    def http_timeout(self, timeout_cls: Any, streamed: bool = False) -> Any:
        """These options as an SDK timeout (``anthropic.Timeout`` or ``openai.Timeout``).

        Unstreamed calls (the batch APIs) wait ``timeout_s`` for each read.
        """
        read = self.stream_read_s() if streamed else self.timeout_s
        return timeout_cls(read, connect=min(self.connect_timeout_s, read))


def _prices_as(spec: EndpointSpec, api_name: str) -> str | None:
    """The genai-prices id of an endpoint: its own, its vendor's, or none for a custom URL."""
    if spec.prices_as is not None:
        return spec.prices_as
    vendor = {"azure-openai": "azure", "anthropic-bedrock": "aws", "anthropic-vertex": "google"}
    if spec.api in vendor:
        return vendor[spec.api]
    return api_name if spec.base_url is None else None


class Provider(ABC):
    """Base class of every provider.

    Subclasses set ``name``, ``key_env`` (env vars holding the key, first found wins; empty for
    providers without one) and ``default_model``, and implement :meth:`complete`.  ``complete``
    must raise :class:`nyxnb.errors.ProviderError` subclasses with a ``kind`` from
    :data:`ERROR_KINDS`, and must never retry on its own: the fallback chain owns retries.
    """

    name: ClassVar[str]
    key_env: ClassVar[tuple[str, ...]] = ()
    default_model: ClassVar[str] = ""
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    #: Send one probe call before any concurrency (a provider out of credit is then called
    #: once per run, not once per item).  Off for local providers that have no account.
    probe_first: ClassVar[bool] = True

    #: The ``genai-prices`` provider id its models are priced by (None: only pricing.yaml).
    prices_as: str | None = None

    def __init__(
        self, options: ProviderOptions | None = None, endpoint: Endpoint | None = None
    ) -> None:
        self.options = options or self.Options()
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.endpoint = endpoint
        self.prices_as = type(self).name if type(self).key_env else None
        if endpoint is not None:  # a named endpoint: its own name, key variable and prices
            self.name = endpoint.name  # type: ignore[misc]
            self.key_env = endpoint.key_vars(type(self).key_env)  # type: ignore[misc]
            self.default_model = endpoint.spec.model or type(self).default_model  # type: ignore[misc]
            self.prices_as = _prices_as(endpoint.spec, type(self).name)
            self.probe_first = bool(self.key_env) or endpoint.spec.base_url is None  # type: ignore[misc]

    def client(self) -> Any:
        """The SDK client, made on first use and again if the event loop changed.

        Kept referenced on purpose: google-genai closes a temporary client before its request.
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = self.make_client()
            self._client_loop = loop
        return self._client

    def make_client(self) -> Any:
        """Build the SDK client (providers over an SDK override this)."""
        raise NotImplementedError(f"{type(self).__name__} has no SDK client")

    async def close_client(self, client: Any) -> None:
        """Close an SDK client made by :meth:`make_client`."""
        await client.close()

    def api_key(self) -> str:
        """The key from the environment, or :class:`MissingKey` naming the variables to set."""
        for var in self.key_env:
            if os.environ.get(var):
                return os.environ[var]
        raise MissingKey(self.name, self.key_env)

    def check_ready(self) -> None:
        """Raise :class:`MissingKey` now rather than at the first call."""
        if self.key_env:
            self.api_key()

    def model_for(self, request: CompletionRequest) -> str:
        """The model a request will use."""
        return request.model or self.default_model

    def watch(self, request: CompletionRequest) -> Watch:
        """The timeouts and progress of one streamed answer to ``request``."""
        model = self.model_for(request)
        reasoning = bool(request.reasoning_effort or request.reasoning_budget)
        first_byte = self.options.first_byte_s(model, reasoning)
        return Watch(self.name, model, first_byte, self.options.idle_s)

    @abstractmethod
    async def complete(self, request: CompletionRequest) -> Completion:
        """Send one request and return the normalised answer.

        Args:
            request: system prompt, messages, model and sampling parameters.

        Returns:
            The answer text, normalised stop reason and token usage.
        """

    async def aclose(self) -> None:
        """Release the SDK client, if any."""
        client, self._client = self._client, None
        if client is not None:
            await self.close_client(client)
