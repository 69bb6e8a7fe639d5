"""Request knobs per API: reasoning, service tier and sampling, and the usage that reports them.

One :class:`~nyxnb.providers.base.CompletionRequest` says what a step wants (``reasoning_effort``
or ``reasoning_budget``, ``service_tier``, ``temperature``, ``top_p``, ``stop``, ``seed``); each
API spells it its own way:

===============  =======================  ==================================  =====================
knob             OpenAI (Chat Compl.)     Anthropic (Messages)                Gemini
===============  =======================  ==================================  =====================
effort           ``reasoning_effort``     thinking budget (:data:`BUDGETS`)   ``thinking_level``
                                                                              (Gemini 3) or budget
budget_tokens    effort (:func:`effort`)  ``thinking.budget_tokens`` (max     ``thinking_budget``
                                          tokens raised above it)
service_tier     ``service_tier``         ``auto`` for priority; no flex      ``service_tier``
temperature      yes                      yes (refused with thinking)         yes
top_p / stop     yes / ``stop``           yes / ``stop_sequences``            yes / stop_sequences
seed             yes                      (no such parameter: dropped)        yes
===============  =======================  ==================================  =====================

Thinking tokens are counted in ``output_tokens`` by all three (and priced as output); the
parsers below also report them apart (``Completion.reasoning_tokens``).
"""

from __future__ import annotations

import math
from typing import Any

from nyxnb.providers.base import CompletionRequest

#: Thinking budget of each effort where an API takes a budget (Anthropic; Gemini 2.5).
BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
ANTHROPIC_MIN_BUDGET = 1024


def effort(request: CompletionRequest) -> str | None:
    """The effort of a request; a budget maps to the effort whose budget it reaches."""
    if request.reasoning_effort is not None:
        return request.reasoning_effort
    budget = request.reasoning_budget
    if budget is None:
        return None
    for name in ("minimal", "low", "medium"):
        if budget <= BUDGETS[name]:
            return name
    return "high"


def budget(request: CompletionRequest) -> int | None:
    """The thinking budget of a request; an effort maps through :data:`BUDGETS`."""
    if request.reasoning_budget is not None:
        return request.reasoning_budget
    return BUDGETS[request.reasoning_effort] if request.reasoning_effort else None


#: The service tiers each API takes (Anthropic's priority is asked for as ``auto``).
TIERS_BY_API = {
    "openai": frozenset({"default", "flex", "priority"}),
    "google": frozenset({"default", "flex", "priority"}),
    "anthropic": frozenset({"priority"}),
}


def served_tier(api: str, asked: str | None, reported: str | None) -> str | None:
    """The tier to record and price a call at: what the provider reported, else what was asked
    where the API has that tier (None: it has none). Anthropic's and Gemini's ``standard`` is
    recorded as ``default``."""
    if reported:
        return "default" if reported == "standard" else reported
    return asked if asked in TIERS_BY_API.get(api, frozenset()) else None


def _sampling(request: CompletionRequest, stop_name: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.top_p is not None:
        params["top_p"] = request.top_p
    if request.stop:
        params[stop_name] = list(request.stop)
    return params


# -- OpenAI (and every OpenAI-compatible server, Azure included) ----------------------------


def openai_params(request: CompletionRequest) -> dict[str, Any]:
    """Chat Completions parameters for the request's reasoning, tier and sampling."""
    params = _sampling(request, "stop")
    if request.seed is not None:
        params["seed"] = request.seed
    level = effort(request)
    if level is not None:
        params["reasoning_effort"] = level
    if request.service_tier is not None:
        params["service_tier"] = request.service_tier
    return params


# -- Anthropic (API, Bedrock, Vertex) ---------------------------------------------------------


def anthropic_params(request: CompletionRequest, params: dict[str, Any]) -> dict[str, Any]:
    """Messages API ``params`` with thinking, tier and sampling added.

    Extended thinking needs ``max_tokens`` above its budget: when it is not, the answer's own
    allowance is added on top of the budget (``max_tokens = budget + max_tokens``).
    """
    out = dict(params)
    sampling = _sampling(request, "stop_sequences")
    if "stop_sequences" in sampling:
        out["stop_sequences"] = sampling.pop("stop_sequences")
    if sampling:  # through extra_body, as before: temperature/top_p are model-dependent
        out["extra_body"] = {**out.get("extra_body", {}), **sampling}
    thinking = budget(request)
    if thinking is not None:
        if thinking == 0:
            out["thinking"] = {"type": "disabled"}
        else:
            thinking = max(thinking, ANTHROPIC_MIN_BUDGET)
            out["thinking"] = {"type": "enabled", "budget_tokens": thinking}
            if out["max_tokens"] <= thinking:
                out["max_tokens"] = thinking + out["max_tokens"]
    if request.service_tier == "priority":
        out["service_tier"] = "auto"  # priority capacity where the organisation has it
    return out


def anthropic_thinking_tokens(usage: Any, thought: str) -> int:
    """Thinking tokens of a message (``thought``: its thinking text).

    ``usage.output_tokens_details.thinking_tokens`` where the API reports it; otherwise an
    estimate from the thinking text (4 characters a token, at most the output tokens).
    """
    details = getattr(usage, "output_tokens_details", None) if usage is not None else None
    if details is not None and getattr(details, "thinking_tokens", None) is not None:
        return int(details.thinking_tokens)
    if not thought:
        return 0
    output = int(getattr(usage, "output_tokens", 0) or 0) if usage is not None else 0
    return min(math.ceil(len(thought) / 4), output)


def anthropic_thoughts(blocks: Any) -> str:
    """The thinking text of a message's content blocks."""
    return "".join(str(getattr(b, "thinking", "") or "") for b in blocks if b.type == "thinking")


# -- Gemini (API and Vertex AI) ---------------------------------------------------------------


def google_config(request: CompletionRequest) -> dict[str, Any]:
    """``GenerateContentConfig`` fields for the request's reasoning, tier and sampling."""
    from google.genai import types

    config = _sampling(request, "stop_sequences")
    if request.seed is not None:
        config["seed"] = request.seed
    thinking: dict[str, Any] = {}
    if request.reasoning_effort is not None and (request.model or "").startswith("gemini-3"):
        thinking["thinking_level"] = types.ThinkingLevel(request.reasoning_effort.upper())
    elif budget(request) is not None:
        thinking["thinking_budget"] = budget(request)
    if request.keep_thinking:
        thinking["include_thoughts"] = True
    if thinking:
        config["thinking_config"] = types.ThinkingConfig(**thinking)
    if request.service_tier is not None:
        tier = "standard" if request.service_tier == "default" else request.service_tier
        config["service_tier"] = types.ServiceTier(tier)
    return config


def google_thoughts(response: Any) -> tuple[str, str | None]:
    """(thought text, served tier) of a generateContent response (its tokens: usage)."""
    usage = response.usage_metadata
    candidate = response.candidates[0] if response.candidates else None
    parts = candidate.content.parts if candidate and candidate.content else None
    text = "".join(p.text for p in parts or [] if p.thought and p.text)
    tier = getattr(usage, "service_tier", None) if usage else None
    served = str(getattr(tier, "value", tier)) if tier else None
    return text, None if served in (None, "unspecified") else served
