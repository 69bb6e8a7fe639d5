"""Typed rows the engine passes between its modules: a step, its config, a fan-out item, and
the rows that commit a completed item.

They are read from ``workflow_steps`` / ``step_items`` once per use and never mutated; a change is
a write through :mod:`nyxnb.engine.durable.records` followed by a fresh read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from nyxnb.callspec import ReasoningSpec
from nyxnb.sources import ItemsSource
from nyxnb.spec import ItemSpec
from nyxnb.store.models import COMPLETED


@dataclass(frozen=True)
class StepConfig:
    """The type-specific settings of a step (``workflow_steps.config``)."""

    items: tuple[ItemSpec, ...] | None = None  # fan-out: inline items
    items_from: str | None = None  # fan-out: parse items from this step's output
    dataset: ItemsSource | None = None  # fan-out: rows materialised into step_items at creation
    dataset_digest: str | None = None  # fan-out: sha256 of the dataset's rows (a revision's test)
    output_schema: Mapping[str, Any] | None = None  # the JSON Schema answers must match
    concurrency: int | None = None
    max_tokens: int | None = None
    repository: str | None = None  # pattern-check
    target: str | None = None  # pattern-check: the step whose output is checked
    fail_on_violation: bool = False
    rubric: str | None = None  # judge
    scale: int | None = None  # judge
    source: str | None = None  # implementation-prompt: the fan-out it reads (JSON key ``from``)
    item_idx: int | None = None  # implementation-prompt: which item of ``source``
    heading: str | None = None
    batch: bool | None = None  # fan-out: through the batch API (None: the spec default)
    # the step's own call settings (None: ``defaults``'); see nyxnb.callspec.CallSettings
    reasoning: ReasoningSpec | None = None
    keep_thinking: bool | None = None
    service_tier: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> StepConfig:
        """The config from its stored JSON form."""
        data = dict(data or {})
        items = data.pop("items", None)
        source = data.pop("from", None)
        if isinstance(data.get("items_from"), Mapping):
            data["dataset"] = ItemsSource.model_validate(data.pop("items_from"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("reasoning") is not None:
            known["reasoning"] = ReasoningSpec.model_validate(known["reasoning"])
        if known.get("stop") is not None:
            known["stop"] = tuple(known["stop"])
        return cls(
            items=_ITEMS.validate_python(items) if items is not None else None,
            source=source,
            **known,
        )


#: Validates a fan-out's stored items in one call (one ``model_validate`` per item cost ~5 us).
_ITEMS: TypeAdapter[tuple[ItemSpec, ...]] = TypeAdapter(tuple[ItemSpec, ...])


@dataclass(frozen=True)
class StepRow:
    """One ``workflow_steps`` row, as the engine reads it."""

    id: str
    tenant_id: str
    workflow_id: str
    order: int
    name: str
    type: str
    persona: str | None
    provider: str
    fallback: tuple[str, ...]
    model: str | None
    prompt: str
    status: str
    output: str | None
    auto_generated: bool
    input_hash: str | None
    config: StepConfig

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> StepRow:
        """A step from a result row of ``select(workflow_steps)``."""
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            workflow_id=row["workflow_id"],
            order=row["order"],
            name=row["name"],
            type=row["type"],
            persona=row["persona"],
            provider=row["provider"],
            fallback=tuple(row["fallback"] or ()),
            model=row["model"],
            prompt=row["prompt"] or "",
            status=row["status"],
            output=row["output"],
            auto_generated=bool(row["auto_generated"]),
            input_hash=row["input_hash"],
            config=StepConfig.from_json(row["config"]),
        )

    @property
    def chain(self) -> list[str]:
        """The step's provider chain: its provider, then its fallbacks."""
        return [self.provider, *self.fallback]


@dataclass(frozen=True)
class ItemRow:
    """One ``step_items`` row: a fan-out item and, once committed, its output."""

    id: str
    idx: int
    heading: str
    status: str
    output: str | None
    input_hash: str | None
    input: str = ""  # the rendered prompt (a worker helping a fan-out rebuilds the request)
    error: str | None = None
    key: str | None = None  # a dataset row's key
    data: Mapping[str, Any] | None = None  # a dataset row's columns

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> ItemRow:
        """An item from a result row of ``select(step_items)``."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ItemUpdate:
    """A completed fan-out item's row: which item, and what it now holds."""

    step_id: str
    idx: int
    output: str
    provider: str
    updated_at: datetime

    def params(self) -> dict[str, object]:
        """The bind parameters of the item's UPDATE (``b_*`` name the row)."""
        return {
            "b_step": self.step_id,
            "b_idx": self.idx,
            "status": COMPLETED,
            "output": self.output,
            "error": None,
            "provider": self.provider,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class ItemRows:
    """Everything that commits one completed fan-out item."""

    calls: list[dict[str, Any]]
    cache: dict[str, Any] | None
    item: ItemUpdate | None  # None: ledger rows only (a 'sent' attempt)
    settle: tuple[str, ...] = ()  # ids of the 'sent' rows these rows complete
