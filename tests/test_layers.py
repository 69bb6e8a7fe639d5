"""The package's folders are its layers: imports point down only, and no module imports itself back.

The table is DESIGN.md's "Layout" (the engine folder is ``engine/``: ``nyxnb.run`` is the public
run function). Imports are read with ``ast``, ``TYPE_CHECKING`` blocks and function-local imports
included: a cycle hidden in either is still a cycle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nyxnb"
GROUND = {
    "errors",
    "events",
    "spec",
    "sources",
    "templates",
    "paths",
    "autosteps",
    "rates",
    "callspec",
}

# folder -> the folders it may import (the ground modules are allowed everywhere)
ALLOWED: dict[str, set[str]] = {
    "cli": {
        "notebook",
        "engine",
        "reports",
        "tenants",
        "providers",
        "store",
        "testing",
        "datasets",
    },
    "notebook": {"engine", "reports", "tenants", "providers", "store", "datasets"},
    "engine": {"providers", "store", "datasets"},
    "reports": {"store", "datasets"},
    "tenants": {"store"},
    "providers": set(),
    "store": set(),
    "datasets": set(),  # reading and writing tables with DuckDB; the ground only
    "testing": {"providers"},
    "ground": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """The folder of a nyxnb module; ``ground`` for the ground modules; None for the root."""
    parts = module.split(".")
    if parts[0] != "nyxnb" or len(parts) == 1:
        return None
    if parts[1] in GROUND:
        return "ground"
    return parts[1] if parts[1] in ALLOWED else None


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every nyxnb module a source imports (``from X import n`` also counts ``X.n``)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nyxnb"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nyxnb"):
                continue
            if target != "nyxnb":  # `from nyxnb import events` imports the module, not the face
                found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the nyxnb modules it imports (only modules that exist)."""
    files = {module_name(p): p for p in root.rglob("*.py") if "migrations" not in p.parts}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        edges[name] = {t for t in targets if t in files and t != name}
    return edges


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a folder to one it may not import."""
    bad = []
    for src, targets in edges.items():
        src_layer = layer_of(src)
        if src_layer is None:
            continue
        for dst in sorted(targets):
            dst_layer = layer_of(dst)
            if dst_layer in (None, "ground", src_layer):
                if dst_layer is None and src_layer != "ground":
                    bad.append(f"{src} -> {dst} (the package root)")
                continue
            if dst_layer not in ALLOWED[src_layer]:
                bad.append(f"{src} -> {dst} ({src_layer} may not import {dst_layer})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, one path each (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _is_package_init_edge(src: str, dst: str) -> bool:
    # a package's __init__ re-exporting its own modules is not a cycle with them
    return dst.startswith(src + ".")


def package_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    trimmed = {s: {d for d in ds if not _is_package_init_edge(s, d)} for s, ds in edges.items()}
    return cycles(trimmed)


# Rooms of the engine that stand on their own: each may import, of the engine, only itself and
# the shared values in ``engine/outcomes.py`` (never each other, never the top modules).
ENGINE_BASE_ROOMS = ("calls", "durable")
ENGINE_SHARED = "nyxnb.engine.outcomes"


def engine_room_of(module: str) -> str | None:
    """``calls``/``durable``/... for a module inside an engine sub-package; ``top`` otherwise."""
    parts = module.split(".")
    if parts[:2] != ["nyxnb", "engine"] or len(parts) < 3:
        return None
    is_room = len(parts) > 3 or (PACKAGE / "engine" / parts[2]).is_dir()
    return parts[2] if is_room else "top"


def engine_room_breaches(edges: dict[str, set[str]]) -> list[str]:
    """Imports out of ``calls/`` or ``durable/`` into another part of the engine."""
    bad = []
    for src, targets in edges.items():
        room = engine_room_of(src)
        if room not in ENGINE_BASE_ROOMS:
            continue
        for dst in sorted(targets):
            dst_room = engine_room_of(dst)
            if dst_room in (None, room) or dst == ENGINE_SHARED or dst == "nyxnb.engine":
                continue
            bad.append(f"{src} -> {dst} (engine/{room} may not import {dst_room})")
    return bad


def test_calls_and_durable_stand_on_their_own() -> None:
    assert engine_room_breaches(graph()) == []


def test_a_room_breach_is_caught() -> None:
    edges = graph()
    edges["nyxnb.engine.durable.records"] |= {"nyxnb.engine.calls.chain"}
    edges["nyxnb.engine.calls.chain"] |= {"nyxnb.engine.context"}
    assert engine_room_breaches(edges) == [
        "nyxnb.engine.calls.chain -> nyxnb.engine.context (engine/calls may not import top)",
        "nyxnb.engine.durable.records -> nyxnb.engine.calls.chain "
        "(engine/durable may not import calls)",
    ]


def test_no_import_cycles() -> None:
    assert package_cycles(graph()) == []


def test_imports_point_down_the_layers() -> None:
    assert upward_imports(graph()) == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The guard works: ``from nyxnb.cli ...`` inside the engine fails it."""
    edges = graph()
    edges["nyxnb.engine.runner"] = edges["nyxnb.engine.runner"] | {"nyxnb.cli.common"}
    assert upward_imports(edges) == [
        "nyxnb.engine.runner -> nyxnb.cli.common (engine may not import cli)"
    ]
    source = "from nyxnb.cli.common import emit\n"
    assert "nyxnb.cli.common" in imports_of(source, "nyxnb.engine.runner", False)


def test_a_cycle_is_caught() -> None:
    edges = graph()
    edges["nyxnb.engine.durable.rows"] = edges["nyxnb.engine.durable.rows"] | {
        "nyxnb.engine.runner"
    }
    assert any(
        "nyxnb.engine.durable.rows" in c and "nyxnb.engine.runner" in c for c in cycles(edges)
    )


ENGINE_ROOMS = [
    "engine/calls",
    "engine/durable",
    "engine/batch",
    "engine/workers",
    "engine/iterate",
]


@pytest.mark.parametrize("folder", sorted(set(ALLOWED) - {"ground"}) + ENGINE_ROOMS)
def test_each_folder_says_what_it_owns(folder: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
    assert doc and "import" in doc, f"nyxnb/{folder}/__init__.py needs a docstring with its rules"


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts  # generated Alembic revisions
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert long == {}


def test_the_engine_reaches_the_database_only_through_its_gateway() -> None:
    """17 writes went through ``store.engine.begin()``, around the run's fence and its
    reconnect retries.  No module of the engine but the gateway may touch a raw engine."""
    found = []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        if path.name == "gateway.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            raw = isinstance(node, ast.Attribute) and node.attr in ("engine", "_engine")
            if raw and not (isinstance(node.value, ast.Name) and node.value.id == "nyxnb"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            name = (
                node.func.id
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                else ""
            )
            if name == "create_engine":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} create_engine")
    assert found == []
