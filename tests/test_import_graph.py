"""Dependencies point down: the import graph of ``src/spiketwin`` has no cycle.

The graph is read statically (``ast``) from every module, with relative imports resolved and imports inside
functions counted like those at the top: a function-level import still ties the two modules together, it only
hides the cycle until the function runs. ``from package import name`` points at ``package.name`` when that is a
module, else at the package. Importing a submodule also runs its package's ``__init__``, but that edge is left
out: every package that re-exports its submodules would otherwise be a cycle with each of them. From another
package it counts, though: importing ``a.b.c`` from outside ``a.b`` runs ``a.b``'s ``__init__`` first, and a cycle
through it fails when the importing module is the first one loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Edges that close a cycle through code another engineer is changing now; each names its owner and the way out.
# A listed edge that no longer exists fails the test below, so the list shrinks as they are removed.
KNOWN: dict[tuple[str, str], str] = {
}


def modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` of every module of ``spiketwin`` under ``src``."""
    found = {}
    for file in sorted((src / "spiketwin").rglob("*.py")):
        parts = list(file.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (file, package)
    return found


def imports(name: str, found: dict[str, tuple[Path, bool]]) -> set[str]:
    """The modules of ``found`` that module ``name`` imports, anywhere in its code."""
    file, is_package = found[name]
    here = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name in found)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[:len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names} & found.keys()
            targets.update(submodules)
            if len(submodules) < len(node.names) and module in found:
                targets.add(module)
    return targets - {name}


def graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules it imports, and the packages (``__init__``) that importing them runs first."""
    found = modules(src)
    edges = {}
    for name in found:
        targets = imports(name, found)
        for target in list(targets):
            parts = target.split(".")
            for i in range(2, len(parts)):  # the packages above the target, below ``spiketwin`` itself
                package = ".".join(parts[:i])
                if package in found and not name.startswith(package + ".") and name != package:
                    targets.add(package)
        edges[name] = targets - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_cycle_in(component, edges))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def _cycle_in(component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (breadth first, inside the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_the_import_graph_has_no_cycle():
    edges = graph()
    for (a, b), owner in KNOWN.items():
        assert b in edges.get(a, set()), f"known exception {a} -> {b} ({owner}) is gone: remove it from KNOWN"
        edges[a].discard(b)
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "spiketwin"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import f\n")
    (package / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    (package / "c.py").write_text("import spiketwin.a\n")
    edges = graph(tmp_path)
    assert edges == {"spiketwin": {"spiketwin.a"}, "spiketwin.a": {"spiketwin.sub", "spiketwin.sub.b"},
                     "spiketwin.sub": set(),
                     "spiketwin.sub.b": {"spiketwin.a"}, "spiketwin.c": {"spiketwin.a"}}
    assert cycles(edges) == [["spiketwin.a", "spiketwin.sub.b", "spiketwin.a"]]


def test_a_cycle_through_another_package_s_init_is_found(tmp_path):
    """``k.step`` imports ``n.rule``, which runs ``n/__init__``, which imports ``n.neuron``, which imports ``k.step``:
    importing ``k.step`` first fails although no two modules import each other."""
    root = tmp_path / "spiketwin"
    for package in ("k", "n"):
        (root / package).mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "k" / "__init__.py").write_text("")
    (root / "k" / "step.py").write_text("from ..n.rule import f\n")
    (root / "n" / "__init__.py").write_text("from .neuron import N\n")
    (root / "n" / "neuron.py").write_text("from ..k.step import g\n")
    (root / "n" / "rule.py").write_text("")
    assert cycles(graph(tmp_path)) == [["spiketwin.k.step", "spiketwin.n", "spiketwin.n.neuron", "spiketwin.k.step"]]
