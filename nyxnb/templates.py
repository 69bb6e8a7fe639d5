"""Sandboxed Jinja2 prompts: the render context and static checks of what a template names.

Templates see ``project`` (name, description), ``item`` (heading, body, index) inside a fan-out,
and ``steps.NAME`` (output, items: each with heading and output) for earlier steps.  The context
is made of small objects, not dicts, so ``steps.features.items`` is the items list and not
``dict.items`` (Jinja2 looks attributes up before keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, nodes
from jinja2.sandbox import SandboxedEnvironment

from nyxnb.errors import SpecError

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@dataclass(frozen=True)
class ProjectView:
    """``project`` in a template."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class ItemView:
    """``item`` in a fan-out template; ``index`` is 0-based, ``number`` 1-based."""

    heading: str
    body: str = ""
    index: int = 0
    output: str | None = None

    @property
    def number(self) -> int:
        """1-based position of the item."""
        return self.index + 1


@dataclass(frozen=True)
class StepView:
    """``steps.NAME`` in a template."""

    name: str
    output: str | None = None
    items: list[ItemView] = field(default_factory=list)


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
    "item": frozenset({"heading", "body", "index", "number", "output"}),
    "step": frozenset({"name", "output", "items"}),
}


def unknown_fields(source: str) -> list[str]:
    """``project.X`` / ``item.X`` / ``steps.NAME.X`` reads naming a field that does not exist."""
    ast = _ENV.parse(source)
    bad = []
    for node in ast.find_all(nodes.Getattr):
        inner = node.node
        if isinstance(inner, nodes.Name) and inner.name in ("project", "item"):
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
    source: str, *, field_name: str, allowed: Iterable[str], earlier_steps: Iterable[str]
) -> None:
    """Raise :class:`SpecError` if the template names a variable, field or step it cannot see."""
    compile_template(source, field_name=field_name)
    for ref in unknown_fields(source):
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
