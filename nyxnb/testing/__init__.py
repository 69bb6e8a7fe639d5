"""A loopback fake of the Anthropic, OpenAI and Gemini HTTP APIs for offline tests.

Point the official SDKs at it through their base-URL variables (``FakeProviderServer.env``).
May import ``nyxnb.providers`` and the ground modules.
"""

from nyxnb.testing.server import (
    FAKE_KEYS,
    PROVIDERS,
    Action,
    FakeProviderServer,
    Fault,
    Hang,
    Reply,
    auth_error,
    context_too_long,
    credit_exhausted,
    error,
    fault_body,
    gemini_quota_exhausted,
    hang,
    insufficient_quota,
    model_not_found,
    overloaded,
    prompt_blocked,
    prompt_of,
    rate_limited,
    reply,
    reply_body,
    route,
    server_error,
)

__all__ = [
    "Action",
    "FAKE_KEYS",
    "FakeProviderServer",
    "Fault",
    "Hang",
    "PROVIDERS",
    "Reply",
    "auth_error",
    "context_too_long",
    "credit_exhausted",
    "error",
    "fault_body",
    "gemini_quota_exhausted",
    "hang",
    "insufficient_quota",
    "model_not_found",
    "overloaded",
    "prompt_blocked",
    "prompt_of",
    "rate_limited",
    "reply",
    "reply_body",
    "route",
    "server_error",
]
