"""The packages' layering, read from the source: who may import whom, and no import cycle.

xen9p_common is imported by everyone and imports none of the others; the workers never import the
daemon; nothing xen9pd or a worker runs imports the simulator (xen9p_sim), which exists for
xen9psim and the tests. Module-level imports form no cycle (a cycle makes import order matter).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("xen9p_common", "xen9p_worker", "xen9p_supervisor", "xen9p_sim")
# package -> packages it must never import (at any level, lazily or not)
FORBIDDEN = {
    "xen9p_common": {"xen9p_worker", "xen9p_supervisor", "xen9p_sim"},
    "xen9p_worker": {"xen9p_supervisor", "xen9p_sim"},
    "xen9p_supervisor": {"xen9p_sim"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


MODULES = _modules()


def test_the_tree_has_every_package():
    assert all(any(m.split(".")[0] == p for m in MODULES) for p in PACKAGES)


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_a_package_imports_only_the_layers_below_it(pkg):
    wrong = sorted(f"{m} imports {i}" for m, p in MODULES.items() if m.split(".")[0] == pkg
                   for i in _imports(m, p, top_level_only=False) if i.split(".")[0] in FORBIDDEN[pkg])
    assert not wrong, "\n".join(wrong)


def test_module_level_imports_have_no_cycle():
    graph = {m: {i for i in _imports(m, p, top_level_only=True) if i in MODULES and i != m}
             for m, p in MODULES.items()}
    # a package's __init__ is imported by its submodules implicitly; only explicit edges count
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
