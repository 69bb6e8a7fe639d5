"""Workflow specs (YAML, JSON or a dict) validated by pydantic; errors name the field and line.

name: brbase-plan
defaults: {provider: anthropic, fallback: [google, openai], model: null, concurrency: 8}
steps:
  - {name: analysis, persona: Athena, prompt: "Analyse {{ project.name }}"}
  - {name: features, type: fan-out, persona: Cael, items: [{heading: Auth}],
     prompt: "Design {{ item.heading }}"}
generate:
  consistency_check: {persona: Nemesis}
  implementation_prompts: {from: features, persona: Aristaeus}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nyxnb.callspec import ENDPOINT_NAME, CallSettings, EndpointSpec
from nyxnb.errors import SpecError
from nyxnb.sources import ItemsSource, load_schema, schema_value
from nyxnb.templates import check_template

USER_STEP_TYPES = ("llm", "fan-out", "synthesis", "review", "pattern-check", "judge")
GENERATED_STEP_TYPES = ("consistency-check", "implementation-prompt")
LLM_STEP_TYPES = ("llm", "fan-out", "synthesis", "review", "judge", *GENERATED_STEP_TYPES)
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ItemSpec(_Model):
    """One fan-out item."""

    heading: str = Field(min_length=1)
    body: str = ""


class LimitSpec(_Model):
    """A provider's rate limits (requests and tokens per minute, calls in flight).

    Unset limits are learned from the provider's answers; set them to stay under a shared key's
    budget or when a provider does not say.
    """

    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, ge=1, le=256)


#: The longest ``batch_poll.deadline_h``: a week (providers end a batch within 24-48 h anyway).
MAX_DEADLINE_H = 168.0
#: The validation context of a spec read back from the store (:func:`stored_spec`).
STORED = "stored"


class BatchPoll(_Model):
    """Batch polling: backoff from ``initial_s`` up to ``max_s``; cancelled after a deadline.

    The wait between two polls of a batch's status grows from ``initial_s`` by ``multiplier``
    up to ``max_s`` (5 s to 5 min: about 300 polls a day). A poll that fails transiently (429,
    5xx, a timeout, a dropped connection) is retried on the same schedule; after
    ``max_outage_s`` of failed polls the workflow pauses with the batch open (``nyxnb resume``
    polls it again). ``deadline_h`` after submission the batch is cancelled: what finished is
    kept, the rest follows ``batch_fallback``. Both take fractions (``deadline_h: 0.5``).
    """

    initial_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    max_s: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    multiplier: float = Field(default=1.5, ge=1, allow_inf_nan=False)
    deadline_h: float = 24.0
    max_outage_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)

    @field_validator("deadline_h")
    @classmethod
    def _check_deadline(cls, hours: float, info: ValidationInfo) -> float:
        """A finite number of hours up to :data:`MAX_DEADLINE_H`.

        A spec frozen with its workflow by an older nyxnb, which took any number, is read back
        with the deadline clamped (:func:`stored_spec`): it cannot be corrected any more.
        """
        if 0 < hours <= MAX_DEADLINE_H:  # False for nan
            return hours
        if (info.context or {}).get(STORED):
            return MAX_DEADLINE_H
        raise ValueError(
            f"batch_poll.deadline_h must be more than 0 and at most {MAX_DEADLINE_H:g} hours, "
            f"not {hours:g}: it is when a batch still running is cancelled, and providers end "
            "a batch within 24 h (Gemini 48 h); use e.g. deadline_h: 24"
        )

    @model_validator(mode="after")
    def _check_backoff(self) -> BatchPoll:
        if self.max_s < self.initial_s:
            raise ValueError(
                f"batch_poll.max_s ({self.max_s:g}) must be at least initial_s "
                f"({self.initial_s:g}): polls back off from initial_s up to max_s"
            )
        return self


class Defaults(CallSettings, _Model):
    """Workflow-wide defaults; each step may override provider, fallback, model, concurrency,
    and the call settings of :class:`~nyxnb.callspec.CallSettings` (reasoning, service tier,
    temperature, top_p, stop, seed).

    ``limits`` maps a provider (or ``provider:model``) to its :class:`LimitSpec`; ``timeouts``
    maps a provider (or ``default``) to the seconds a call may wait for its first byte;
    ``max_wait_s`` bounds how long an item waits for rate limits before it falls back.
    """

    provider: str = "anthropic"
    fallback: list[str] = Field(default_factory=lambda: ["google", "openai"])
    model: str | None = None
    concurrency: int = Field(default=8, ge=1, le=256)
    max_tokens: int = Field(default=2048, ge=1, le=200_000)
    cache: bool = True
    #: the response cache is scoped by tenant; True shares answers across tenants (opt-in)
    share_cache: bool = False
    limits: dict[str, LimitSpec] = Field(default_factory=dict)
    timeouts: dict[str, float] = Field(default_factory=dict)
    max_wait_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _check_timeouts(self) -> Defaults:
        for name, seconds in self.timeouts.items():
            if not 0 < seconds <= 3600:
                raise ValueError(f"timeouts.{name} must be between 0 and 3600 seconds")
        return self

    batch: bool = False  # every fan-out through the provider's batch API (half price)
    batch_fallback: Literal["live", "resubmit"] = "resubmit"  # for errored/expired batch items
    batch_poll: BatchPoll = Field(default_factory=BatchPoll)


class StepSpec(CallSettings, _Model):
    """One user-defined step (its call settings override ``defaults``)."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["llm", "fan-out", "synthesis", "review", "pattern-check", "judge"] = "llm"
    persona: str | None = None
    prompt: str = ""
    provider: str | list[str] | None = None
    fallback: list[str] | None = None
    model: str | None = None
    concurrency: int | None = Field(default=None, ge=1, le=256)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    limits: dict[str, LimitSpec] | None = None
    items: list[ItemSpec] | None = None
    items_from: str | ItemsSource | None = None
    #: a JSON Schema (inline, a path to a .json/.yaml file, or a pydantic model from Python)
    output_schema: dict[str, Any] | str | None = None
    repository: str | None = None
    target: str | None = None
    fail_on_violation: bool = False
    batch: bool | None = None  # fan-out only; None follows ``defaults.batch``
    rubric: str | None = None  # judge: what a good answer does
    scale: int | None = Field(default=None, ge=1, le=1000)  # judge: 0..scale (default 10)

    @model_validator(mode="before")
    @classmethod
    def _models_as_schemas(cls, data: Any) -> Any:
        if isinstance(data, dict) and "output_schema" in data:
            return {**data, "output_schema": schema_value(data["output_schema"])}
        return data

    @property
    def dataset(self) -> ItemsSource | None:
        """The dataset this fan-out reads its items from, if any."""
        return self.items_from if isinstance(self.items_from, ItemsSource) else None

    @model_validator(mode="after")
    def _check_shape(self) -> StepSpec:
        if self.output_schema is not None and self.type == "pattern-check":
            raise ValueError("`output_schema` does not apply to pattern-check steps")
        if self.batch is not None and self.type != "fan-out":
            raise ValueError(f"`batch` only applies to fan-out steps, not {self.type}")
        if self.type == "fan-out":
            if (self.items is None) == (self.items_from is None):
                raise ValueError("a fan-out step needs exactly one of `items` or `items_from`")
            if self.items is not None and not self.items:
                raise ValueError("`items` is empty; give at least one item")
        elif self.items is not None or self.items_from is not None:
            raise ValueError(f"`items`/`items_from` only apply to fan-out steps, not {self.type}")
        if self.type == "pattern-check":
            if not self.repository or "/" not in self.repository:
                raise ValueError("a pattern-check step needs `repository: OWNER/REPO`")
        elif self.type == "judge":
            if not self.target or not (self.rubric or "").strip():
                raise ValueError("a judge step needs `target: STEP` and a `rubric`")
        elif not self.prompt.strip():
            raise ValueError("`prompt` is required for this step type")
        return self


class ConsistencyCheckSpec(_Model):
    """The generated consistency-check step."""

    persona: str | None = None
    prompt: str | None = None


class ImplementationPromptsSpec(_Model):
    """One generated implementation-prompt step per item of the fan-out step ``from``."""

    from_: str = Field(alias="from")
    persona: str | None = None
    prompt: str | None = None


class GenerateSpec(_Model):
    """Steps the engine generates after the user's steps."""

    consistency_check: ConsistencyCheckSpec | None = None
    implementation_prompts: ImplementationPromptsSpec | None = None


class DigestSpec(_Model):
    """Write the run's insights when it completes (``nyxnb digest`` runs the same)."""

    persona: str = "Athena"
    provider: str | list[str] | None = None  # default: the workflow's chain


class WorkflowSpec(_Model):
    """A whole workflow definition."""

    name: str = Field(min_length=1)
    description: str = ""
    defaults: Defaults = Field(default_factory=Defaults)
    max_cost_usd: float | None = Field(default=None, gt=0)
    steps: list[StepSpec] = Field(min_length=1)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    # named overrides of `defaults`, run side by side by `nyxnb run --matrix` / run_matrix
    variants: dict[str, dict[str, Any]] | None = None
    digest: DigestSpec | None = None
    # named endpoints (merged over the project's nyxnb.yaml and the user's file)
    endpoints: dict[str, EndpointSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_endpoint_names(self) -> WorkflowSpec:
        for name in self.endpoints:
            if not re.match(ENDPOINT_NAME, name):
                raise ValueError(
                    f"endpoint name {name!r} must be letters, digits, `_`, `-` or `.` "
                    "(no colon: `endpoint:model` splits at the first one)"
                )
        return self

    def step(self, name: str) -> StepSpec:
        """The user step called ``name``."""
        return next(s for s in self.steps if s.name == name)

    def expected_steps(self) -> int:
        """User steps plus the generated ones, as far as the spec lets us count them up front."""
        generate = self.generate
        count = len(self.steps) + (1 if generate.consistency_check else 0)
        if generate.implementation_prompts is not None:
            source = self.step(generate.implementation_prompts.from_)
            count += len(source.items or [])
        return count

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in ``workflows.spec``)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _check_references(spec: WorkflowSpec) -> None:
    seen: list[str] = []
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}]"
        if step.name in seen:
            raise SpecError(
                f"duplicate step name {step.name!r}",
                field=f"{where}.name",
                hint="give every step a unique name",
            )
        if isinstance(step.items_from, str) and step.items_from not in seen:
            raise SpecError(
                f"items_from {step.items_from!r} is not an earlier step",
                field=f"{where}.items_from",
                hint=f"earlier steps: {seen or 'none'}",
            )
        if step.target and step.target not in seen:
            raise SpecError(
                f"target {step.target!r} is not an earlier step",
                field=f"{where}.target",
                hint=f"earlier steps: {seen or 'none'}",
            )
        if step.type != "pattern-check" and step.prompt:
            allowed = {"project", "steps", "loop", "range"} | (
                {"item"} if step.type == "fan-out" else set()
            )
            check_template(
                step.prompt,
                field_name=f"{where}.prompt",
                allowed=allowed,
                earlier_steps=seen,
                open_item=step.dataset is not None or isinstance(step.items_from, str),
            )
        seen.append(step.name)
    impl = spec.generate.implementation_prompts
    if impl is not None:
        fanouts = [s.name for s in spec.steps if s.type == "fan-out"]
        if impl.from_ not in fanouts:
            raise SpecError(
                f"{impl.from_!r} is not a fan-out step",
                field="generate.implementation_prompts.from",
                hint=f"fan-out steps: {fanouts or 'none'}",
            )


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    node = root
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        if node is None:
            break
    return None if node is None else node.start_mark.line + 1


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in USER_STEP_TYPES and not str(part).startswith("function-"):
            out += f".{part}" if out else str(part)
    return out or "spec"


def _from_validation(exc: ValidationError, root: yaml.Node | None) -> SpecError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    hint = {"extra_forbidden": "remove it or check the spelling", "missing": "add it"}.get(
        err["type"], "see the spec format in nyxnb.spec"
    )
    if err["type"] == "literal_error":
        hint = f"use one of: {', '.join(USER_STEP_TYPES)}"
    return SpecError(msg, field=_field_path(loc), line=_line_of(root, loc), hint=hint)


def parse_spec(data: dict[str, Any], *, root: yaml.Node | None = None) -> WorkflowSpec:
    """Validate a spec dict; ``root`` (a composed YAML node) adds line numbers to errors."""
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping with `name` and `steps`", line=1)
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc, root) from None
    try:
        _check_references(spec)
    except SpecError as exc:
        loc = tuple(
            int(p) if p.isdigit() else p
            for p in exc.field.replace("[", ".").replace("]", "").split(".")
        )
        exc.line = _line_of(root, loc)
        if exc.line is not None:
            exc.message = exc.message.replace(f"{exc.field}:", f"{exc.field} (line {exc.line}):", 1)
        raise
    return spec


def _load_json(text: str, source: str) -> WorkflowSpec:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{source} is not valid JSON: {exc.msg} (column {exc.colno})",
            line=exc.lineno,
            hint="check commas, quotes and brackets",
        ) from None
    return parse_spec(data)


def load_spec_text(text: str, *, source: str = "<spec>", json_text: bool = False) -> WorkflowSpec:
    """Parse YAML or JSON text into a validated spec (JSON text is parsed as JSON).

    JSON is parsed as JSON, not as YAML: YAML rejects the ``\\uD83D\\uDE80`` surrogate
    pairs that ``json.dumps`` writes for an emoji.
    """
    if json_text or text.lstrip().startswith(("{", "[")):
        try:
            return _load_json(text, source)
        except SpecError:
            if json_text:
                raise  # a .json file: report the JSON error, not a YAML one
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(
            f"{source} is not valid YAML/JSON: {getattr(exc, 'problem', exc)}",
            line=mark.line + 1 if mark else None,
            hint="check indentation and quoting",
        ) from None
    return parse_spec(data, root=root)


def stored_spec(data: dict[str, Any]) -> WorkflowSpec:
    """A spec frozen with its workflow, read back: valid when it was frozen, so read leniently.

    Rules added since (an unbounded ``batch_poll.deadline_h``) clamp instead of refusing, so an
    old workflow still resumes.
    """
    return WorkflowSpec.model_validate(data, context={STORED: True})


def load_spec(source: str | Path | dict[str, Any] | WorkflowSpec) -> WorkflowSpec:
    """Load a spec from a path (.yaml/.yml/.json), YAML/JSON text, a dict or a spec.

    Files a spec names (datasets, schemas) are relative to the spec file's folder, or to the
    current directory for a spec given as text, a dict or a :class:`WorkflowSpec`.
    """
    if isinstance(source, WorkflowSpec):
        return resolve_files(source, Path.cwd())
    if isinstance(source, dict):
        return resolve_files(parse_spec(source), Path.cwd())
    path = Path(source) if isinstance(source, Path) or "\n" not in source else None
    if path is not None and path.suffix in (".yaml", ".yml", ".json"):
        spec = load_spec_text(_read(path), source=str(path), json_text=path.suffix == ".json")
        return resolve_files(spec, path.resolve().parent)
    return resolve_files(load_spec_text(str(source)), Path.cwd())


def resolve_files(spec: WorkflowSpec, base: Path) -> WorkflowSpec:
    """``spec`` with dataset paths made absolute and ``output_schema`` files read and checked."""
    steps = []
    for i, step in enumerate(spec.steps):
        update: dict[str, Any] = {}
        if step.dataset is not None and step.dataset.base_dir is None:
            source = step.dataset
            path = str((base / source.path).resolve()) if source.path else None
            update["items_from"] = source.model_copy(update={"path": path, "base_dir": str(base)})
        if step.output_schema is not None:
            update["output_schema"] = load_schema(
                step.output_schema, base, f"steps[{i}].output_schema"
            )
        steps.append(step.model_copy(update=update) if update else step)
    return spec.model_copy(update={"steps": steps})


def _read(path: Path) -> str:
    """A spec file's text, or one clear line saying why it cannot be read."""
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} not found", hint="check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"spec file {str(path)!r} is not UTF-8 text (byte {exc.start}: "
            f"{exc.object[exc.start : exc.start + 1]!r})",
            hint="save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None
    except OSError as exc:
        raise SpecError(
            f"spec file {str(path)!r} cannot be read: {exc.strerror}",
            hint="check the file's permissions",
        ) from None


def dumps(spec: WorkflowSpec) -> str:
    """The spec as JSON text."""
    return json.dumps(spec.to_dict(), indent=2)
