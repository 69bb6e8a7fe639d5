"""Sandboxed Jinja2 prompts: the render context and static checks of what a template names.

Templates see ``project`` (name, description), ``item`` (heading, body, index) inside a fan-out,
and ``steps.NAME`` (output, items: each with heading and output) for earlier steps.  The context
is made of small objects, not dicts, so ``steps.features.items`` is the items list and not
``dict.items`` (Jinja2 looks attributes up before keys).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, nodes
from jinja2.sandbox import SandboxedEnvironment

from nyxnb.errors import SpecError

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@dataclass(frozen=True)
class ProjectView:
    """``project`` in a template."""

    name: str
    description: str = ""


def parsed_output(output: str | None) -> Any:
    """A structured output's JSON value (None when the output is not JSON)."""
    text = (output or "").strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class _Fields:
    """A JSON object as a template object: ``{{ item.data.label }}`` reads ``data["label"]``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return _wrap(self._values[name])
        except KeyError:
            known = ", ".join(self._values) or "none"
            raise UndefinedError(f"no field {name!r} (fields: {known})") from None

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._values)

    def __str__(self) -> str:
        return json.dumps(self._values, ensure_ascii=False)


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _Fields(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


@dataclass(frozen=True)
class ItemView:
    """``item`` in a fan-out template; ``index`` is 0-based, ``number`` 1-based.

    A dataset row's columns read as fields (``{{ item.title }}``; the fields above win over a
    column of the same name); ``item.data`` is the parsed structured output.
    """

    heading: str
    body: str = ""
    index: int = 0
    output: str | None = None
    key: str | None = None
    columns: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def row(
        cls, heading: str, index: int, columns: Mapping[str, Any], key: str | None = None
    ) -> ItemView:
        """A row of a dataset (or of a structured output) as an item; a ``body`` column is the
        item's body.  Columns named like another field are read as ``item.columns.NAME``."""
        body = columns.get("body")
        text = "" if body is None else body if isinstance(body, str) else json.dumps(body)
        return cls(heading, text, index, key=key, columns=columns)

    @property
    def number(self) -> int:
        """1-based position of the item."""
        return self.index + 1

    @property
    def data(self) -> Any:
        """The item's structured output as fields (None when it is not JSON)."""
        return _wrap(parsed_output(self.output))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "columns":
            raise AttributeError(name)
        try:
            return _wrap(self.columns[name])
        except KeyError:
            raise UndefinedError(f"item has no field or column {name!r}") from None


@dataclass(frozen=True)
class StepView:
    """``steps.NAME`` in a template; ``data`` is the parsed structured output."""

    name: str
    output: str | None = None
    items: list[ItemView] = field(default_factory=list)

    @property
    def data(self) -> Any:
        """The step's structured output as fields (None when it is not JSON)."""
        return _wrap(parsed_output(self.output))


class StepsView:
    """``steps``: earlier steps by name; naming a missing one is an error, never a blank."""

    def __init__(self, steps: Mapping[str, StepView]) -> None:
        self._steps = dict(steps)

    def __getattr__(self, name: str) -> StepView:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._steps[name]
        except KeyError:
            known = ", ".join(self._steps) or "none yet"
            raise UndefinedError(f"no earlier step named {name!r} (known: {known})") from None

    def __getitem__(self, name: str) -> StepView:
        return self.__getattr__(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._steps.values())


def compile_template(source: str, *, field_name: str) -> None:
    """Parse a template, raising :class:`SpecError` with the line of a syntax error."""
    try:
        _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise SpecError(
            f"template syntax error on template line {exc.lineno}: {exc.message}",
            field=field_name,
            hint="fix the Jinja2 syntax ({{ var }}, {% for %}...{% endfor %})",
        ) from None


def referenced_names(source: str) -> tuple[set[str], set[str]]:
    """Top-level names a template reads, and the step names it reads via ``steps.NAME``."""
    ast = _ENV.parse(source)
    assigned = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    top = {n.name for n in ast.find_all(nodes.Name) if n.ctx == "load"} - assigned
    step_refs: set[str] = set()
    for node in ast.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "steps":
            step_refs.add(node.attr)
    for item in ast.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and item.node.name == "steps":
            if isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
                step_refs.add(item.arg.value)
    return top, step_refs


#: The fields a template may read on each context object.
FIELDS = {
    "project": frozenset({"name", "description"}),
    "item": frozenset({"heading", "body", "index", "number", "output", "key", "data"}),
    "step": frozenset({"name", "output", "items", "data"}),
}


def unknown_fields(source: str, open_item: bool = False) -> list[str]:
    """``project.X`` / ``item.X`` / ``steps.NAME.X`` reads naming a field that does not exist.

    ``open_item``: the items are rows whose columns are fields too (a dataset, or rows of an
    earlier step's structured output), so any ``item.X`` may exist.
    """
    ast = _ENV.parse(source)
    bad = []
    checked = ("project",) if open_item else ("project", "item")
    for node in ast.find_all(nodes.Getattr):
        inner = node.node
        if isinstance(inner, nodes.Name) and inner.name in checked:
            if node.attr not in FIELDS[inner.name]:
                bad.append(f"{inner.name}.{node.attr}")
        elif (
            isinstance(inner, nodes.Getattr)
            and isinstance(inner.node, nodes.Name)
            and inner.node.name == "steps"
            and node.attr not in FIELDS["step"]
        ):
            bad.append(f"steps.{inner.attr}.{node.attr}")
    return bad


def check_template(
    source: str,
    *,
    field_name: str,
    allowed: Iterable[str],
    earlier_steps: Iterable[str],
    open_item: bool = False,
) -> None:
    """Raise :class:`SpecError` if the template names a variable, field or step it cannot see."""
    compile_template(source, field_name=field_name)
    for ref in unknown_fields(source, open_item):
        kind = "step" if ref.startswith("steps.") else ref.split(".")[0]
        raise SpecError(
            f"template reads {ref}, which does not exist",
            field=field_name,
            hint=f"{kind} has: {', '.join(sorted(FIELDS[kind]))}",
        )
    top, step_refs = referenced_names(source)
    allowed = set(allowed)
    for name in sorted(top - allowed):
        raise SpecError(
            f"template uses undefined variable {name!r}",
            field=field_name,
            hint=f"available here: {', '.join(sorted(allowed))}",
        )
    earlier = list(earlier_steps)
    for name in sorted(step_refs - set(earlier)):
        raise SpecError(
            f"template reads steps.{name}, which is not an earlier step",
            field=field_name,
            hint=f"earlier steps: {', '.join(earlier) or 'none'}; a step can only read steps "
            "that run before it",
        )


@lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    return _ENV.from_string(source)


def render(source: str, **context: object) -> str:
    """Render a template with strict undefined handling (compiled once per source)."""
    return _compiled(source).render(**context)
