"""The package's import graph has no cycle: every import of every module of src/i2preg, function-level ones
included, read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import i2preg

PACKAGE_DIR = Path(i2preg.__file__).resolve().parent


def module_name(path: Path) -> str:
    """src/i2preg/data/pairs.py -> i2preg.data.pairs; a package's __init__.py -> the package."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (``from .pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``). Importing a submodule also runs its parents' __init__; those edges are left
    out, as every module would otherwise import the package root."""
    paths = {module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "i2preg.errors" in graph["i2preg.config"]  # from .errors import InputError
    assert "i2preg.geometry" in graph["i2preg.data.synthetic.generate"]  # from i2preg.geometry import ...
    assert "i2preg.api" in graph["i2preg"]  # inside __getattr__
    assert "i2preg.data.synthetic" in graph["i2preg.cli"]  # function level, a package


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
