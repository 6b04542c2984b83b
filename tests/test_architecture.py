"""The layers, checked: the core and the embedder never import FiftyOne, no module of
the package imports another that imports it back, no private name crosses a module, and
FiftyOne's internals are touched in `fo/fields.py` only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bubblefence_plugin"
CORE_MODULES = sorted(p.stem for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The package modules ``path`` imports, at module level or inside functions."""
    here = module_name(path).split(".")
    if path.stem != "__init__":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("bubblefence_plugin")}


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }


@pytest.mark.parametrize("module", [*CORE_MODULES, "embedder"])
def test_core_module_never_imports_fiftyone(module: str) -> None:
    name = f"bubblefence_plugin.core.{module}" if module in CORE_MODULES else module
    name = name if name.startswith("bubblefence_plugin") else f"bubblefence_plugin.{name}"
    code = (
        f"import sys, importlib; importlib.import_module({name!r}); "
        "bad = sorted(m for m in sys.modules if m == 'fiftyone' or m.startswith('fiftyone.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, f"{name} pulls in FiftyOne: {run.stdout}{run.stderr[-2000:]}"


def test_no_import_cycles() -> None:
    graph = package_graph()
    # Packages' __init__ re-export their children; an edge into a package is not a cycle.
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/")).is_dir()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node] - packages):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if start not in state and visit(start, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_borrowed(path: Path) -> list[str]:
    """``from <package module> import _x`` and ``<package module alias>._x`` in ``path``."""
    tree = ast.parse(path.read_text())
    aliases: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("bubblefence_plugin")
        ):
            for a in node.names:
                if _private(a.name):
                    found.append(f"{path.name}:{node.lineno} imports {a.name}")
                else:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bubblefence_plugin"):
                    aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module() -> None:
    root = PACKAGE.parent
    sources = [*PACKAGE.rglob("*.py"), *(root / "operators").glob("*.py")]
    sources += [*(root / "panels").glob("*.py")]
    borrowed = [b for p in sources for b in private_names_borrowed(p)]
    assert not borrowed, "\n".join(borrowed)


def test_fiftyone_internals_are_touched_only_in_fields() -> None:
    """Underscore attributes of other objects (FiftyOne's ``_root_dataset``,
    ``_bulk_write``...) appear in `fo/fields.py` only, each behind a named helper."""
    found = []
    for path in sorted((PACKAGE / "fo").glob("*.py")):
        if path.name == "fields.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert not found, found
