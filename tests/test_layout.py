"""The package's shape: a small root, and imports that go one way.

Every ``import`` of a sparse_runner module counts, also those inside functions: a deferred
import hides a circle from the interpreter but not from the reader, who still cannot tell which
module is built on which.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sparse_runner"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def import_edges(name: str, path: Path, known: set[str]) -> set[str]:
    """The sparse_runner modules that ``name`` imports (``from pkg import mod`` is an edge to
    ``pkg.mod`` when that is a module, else to ``pkg``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    mods = modules()
    graph = {m: import_edges(m, p, set(mods)) for m, p in mods.items()}
    assert cycles(graph) == []


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_root_shows_the_architecture():
    """The root holds the run's spine only; everything else lives in a package named for what
    it owns."""
    root_modules = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root_modules) <= 10, root_modules
    for pkg in (p for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (pkg / "__init__.py").is_file() or pkg.name == "published", pkg


def test_every_module_imports():
    """A fresh interpreter imports every module (dependencies first, as the graph orders
    them), so a moved module leaves no import behind that points to its old place."""
    mods = modules()
    graph = {m: import_edges(m, p, set(mods)) for m, p in mods.items()}
    order: list[str] = []

    def place(m: str) -> None:
        if m not in order:
            for dep in sorted(graph[m]):
                place(dep)
            order.append(m)

    for m in sorted(graph):
        place(m)
    names = [m for m in order if not m.endswith("__main__")]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                         cwd=PKG.parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
