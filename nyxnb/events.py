"""Run events: frozen, JSON-serialisable dataclasses with a ``type`` field.

Every event carries ``workflow_id``; step events carry the step's ``name`` and ``order``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    """Base of every event."""

    type: ClassVar[str] = "event"
    workflow_id: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``type`` first."""
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(self.to_dict(), default=str)


@dataclass(frozen=True)
class WorkflowStarted(Event):
    type: ClassVar[str] = "workflow_started"
    name: str = ""
    tenant: str = ""
    project: str = ""
    resumed: bool = False
    total_steps: int = 0


@dataclass(frozen=True)
class StepEvent(Event):
    """An event about one step."""

    name: str = ""
    order: int = 0
    step_type: str = "llm"


@dataclass(frozen=True)
class StepStarted(StepEvent):
    type: ClassVar[str] = "step_started"
    persona: str | None = None
    provider: str | None = None
    auto_generated: bool = False
    total_items: int | None = None
    done_items: int = 0
    heading: str | None = None  # the item an implementation-prompt step works on


@dataclass(frozen=True)
class FanOutProgress(StepEvent):
    type: ClassVar[str] = "fan_out_progress"
    fan_out_index: int = 0  # 1-based index of the item that just completed
    fan_out_total: int = 0
    fan_out_heading: str = ""
    completed: int = 0  # items completed so far, in any order
    provider: str | None = None  # the provider that answered this item (after any fallback)
    model: str | None = None  # the model that answered
    cached: bool = False  # answered from the response cache: no call was made
    input_tokens: int = 0  # of this item's calls
    output_tokens: int = 0
    cost_usd: float = 0.0
    reasoning_tokens: int = 0  # thinking tokens, a part of output_tokens

    @property
    def item_idx(self) -> int:
        """The item's 0-based index, as ``step_items.idx``, ``items_df`` and ``nyxnb show``."""
        return self.fan_out_index - 1


@dataclass(frozen=True)
class StepCompleted(StepEvent):
    type: ClassVar[str] = "step_completed"
    skipped: bool = False  # already completed with unchanged inputs
    provider: str | None = None  # who answered (a fan-out: every provider that did, comma-joined)
    model: str | None = None  # the model(s) that answered, likewise
    cached: bool = False  # every answer came from the response cache
    cached_items: int = 0  # fan-out: items of this run answered from the cache
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reasoning_tokens: int = 0  # thinking tokens, a part of output_tokens


@dataclass(frozen=True)
class StepFailed(StepEvent):
    type: ClassVar[str] = "step_failed"
    error: str = ""
    item_index: int | None = None


@dataclass(frozen=True)
class ProviderFallback(StepEvent):
    type: ClassVar[str] = "provider_fallback"
    from_provider: str = ""
    to_provider: str | None = None
    reason: str = ""  # error kind
    message: str = ""
    item_index: int | None = None


@dataclass(frozen=True)
class RateLimited(StepEvent):
    """Calls to a provider+model wait for its rate limits (or just got a 429)."""

    type: ClassVar[str] = "rate_limited"
    provider: str = ""
    model: str = ""
    wait_s: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None
    item_index: int | None = None

    @property
    def summary(self) -> str:
        """``waiting for openai: 600 rpm, 200000 tpm`` (what progress shows)."""
        limits = [f"{self.rpm:g} rpm" if self.rpm else "", f"{self.tpm:g} tpm" if self.tpm else ""]
        said = ", ".join(x for x in limits if x) or f"{self.concurrency or 1} in flight"
        return f"waiting for {self.provider}: {said}"


@dataclass(frozen=True)
class Generating(StepEvent):
    """An answer is being streamed (or, ``waiting_s`` set, its first byte is waited for)."""

    type: ClassVar[str] = "generating"
    provider: str = ""
    model: str = ""
    tokens: int = 0  # output tokens so far (estimated from the text)
    tokens_per_s: float = 0.0
    waiting_s: float | None = None  # no byte yet after this long: the provider may be hung
    first_byte_s: float = 0.0  # when a silent provider is given up
    item_index: int | None = None

    @property
    def summary(self) -> str:
        """``item 3: anthropic writing, 412 tokens at 51 tok/s`` or a wait for a silent one."""
        item = f"item {self.item_index}: " if self.item_index is not None else ""
        if self.waiting_s is not None:
            return (
                f"{item}{self.provider} has sent nothing for {self.waiting_s:.0f} s "
                f"(gives up at {self.first_byte_s:g} s)"
            )
        return (
            f"{item}{self.provider} writing, {self.tokens} tokens at {self.tokens_per_s:.0f} tok/s"
        )


@dataclass(frozen=True)
class BatchSubmitted(StepEvent):
    type: ClassVar[str] = "batch_submitted"
    provider: str = ""
    batch_id: str = ""
    items: int = 0
    adopted: bool = False  # an open batch of an earlier run, re-adopted on resume


@dataclass(frozen=True)
class BatchProgress(StepEvent):
    type: ClassVar[str] = "batch_progress"
    provider: str = ""
    batch_id: str = ""
    done: int = 0  # succeeded + errored + expired + canceled, as the provider counts them
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    poll_s: float = 0.0  # seconds until the next poll
    canceling: bool = False  # a cancel was asked (deadline, `nyxnb cancel-batch`, the widget)
    error: str = ""  # this poll failed (429, 5xx, connection): retried after ``poll_s``


@dataclass(frozen=True)
class BatchEnded(StepEvent):
    type: ClassVar[str] = "batch_ended"
    provider: str = ""
    batch_id: str = ""
    succeeded: int = 0
    failed: int = 0  # errored, expired or canceled items (resubmitted or run live)
    then: str = ""  # what the failed items do next: "live" (at once, full price) | "resubmit"


@dataclass(frozen=True)
class WorkflowPaused(Event):
    type: ClassVar[str] = "workflow_paused"
    name: str = ""


@dataclass(frozen=True)
class WorkflowCompleted(Event):
    type: ClassVar[str] = "workflow_completed"
    name: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class WorkflowFailed(Event):
    type: ClassVar[str] = "workflow_failed"
    name: str = ""
    error: str = ""
    failed_steps: list[str] = field(default_factory=list)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        WorkflowStarted,
        StepStarted,
        FanOutProgress,
        StepCompleted,
        StepFailed,
        ProviderFallback,
        RateLimited,
        BatchSubmitted,
        BatchProgress,
        BatchEnded,
        WorkflowPaused,
        WorkflowCompleted,
        WorkflowFailed,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output."""
    fields = dict(data)
    cls = EVENT_TYPES[fields.pop("type")]
    return cls(**fields)
