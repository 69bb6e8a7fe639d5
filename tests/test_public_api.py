"""The public API: a sorted, complete ``__all__``, one error tree, and a light ``import nyxnb``."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from importlib import import_module
from pathlib import Path
from types import ModuleType

import pytest

import nyxnb
from nyxnb import errors

INIT = Path(nyxnb.__file__)
HEAVY = ("anthropic", "openai", "google.genai", "sqlalchemy", "pydantic", "jinja2", "duckdb")


def _defined_public_names() -> set[str]:
    """Public names bound in nyxnb's namespace that come from nyxnb (not modules or helpers)."""
    out = set()
    for name, value in vars(nyxnb).items():
        if name.startswith("_") or isinstance(value, ModuleType):
            continue
        if str(getattr(value, "__module__", "")).startswith("nyxnb"):
            out.add(name)
    return out


def _error_classes() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }


def test_all_is_sorted_and_unique() -> None:
    assert nyxnb.__all__ == sorted(nyxnb.__all__)
    assert len(set(nyxnb.__all__)) == len(nyxnb.__all__)


def test_all_is_exactly_the_public_names() -> None:
    lazy = set(nyxnb._LAZY)  # resolved on first use, so not yet (or not all) in vars()
    expected = _defined_public_names() | lazy | {"__version__"}
    assert set(nyxnb.__all__) == expected
    assert set(_error_classes()) <= set(nyxnb.__all__), "every error class is exported"
    assert dir(nyxnb) == sorted(nyxnb.__all__)


def test_type_checking_imports_match_the_lazy_table() -> None:
    tree = ast.parse(INIT.read_text())
    checked: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and str(stmt.module).startswith("nyxnb.")
                module = str(stmt.module).removeprefix("nyxnb.")
                checked |= {alias.name: module for alias in stmt.names}
    assert checked == nyxnb._LAZY


@pytest.mark.parametrize("name", nyxnb.__all__)
def test_every_name_in_all_resolves(name: str) -> None:
    value = getattr(nyxnb, name)
    assert value is not None
    if name in nyxnb._LAZY:
        assert value is getattr(import_module(f"nyxnb.{nyxnb._LAZY[name]}"), name)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        nyxnb.no_such_name  # noqa: B018
    assert not hasattr(nyxnb, "no_such_name")


def test_every_error_derives_from_nyx_error() -> None:
    classes = _error_classes()
    assert "NyxError" in classes and len(classes) > 10
    for name, cls in classes.items():
        assert issubclass(cls, nyxnb.NyxError), name
        assert cls.__doc__, f"{name} has no docstring"


def test_error_tree_in_the_docstring_matches_the_classes() -> None:
    """Every class is drawn in errors.py's docstring, under its real base class."""
    drawn: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        stripped = line.replace("│", " ").replace("├──", "   ").replace("└──", "   ")
        words = stripped.split()
        if not words or not words[0].isidentifier() or not words[0][0].isupper():
            continue
        if words[0] not in _error_classes():
            continue
        col = len(stripped) - len(stripped.lstrip())
        while stack and stack[-1][0] >= col:
            stack.pop()
        drawn[words[0]] = stack[-1][1] if stack else None
        stack.append((col, words[0]))
    classes = _error_classes()
    assert set(drawn) == set(classes)
    for name, parent in drawn.items():
        real = classes[name].__bases__[0].__name__
        assert parent == (None if name == "NyxError" else real), name


def test_import_nyxnb_is_light_and_every_name_then_loads() -> None:
    script = f"""
import json, sys
import nyxnb
heavy = [m for m in {HEAVY!r} if m in sys.modules]
errors_only = nyxnb.NotFound, nyxnb.NyxError
after_errors = [m for m in {HEAVY!r} if m in sys.modules]
for name in nyxnb.__all__:
    getattr(nyxnb, name)
print(json.dumps({{"heavy": heavy, "after_errors": after_errors,
                  "sqlalchemy_later": "sqlalchemy" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["heavy"] == [], f"`import nyxnb` imported {found['heavy']}"
    assert found["after_errors"] == []
    assert found["sqlalchemy_later"] is True  # the check above can see an import
