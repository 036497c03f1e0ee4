"""The package layering, read from the source: features/ imports neither training/ nor serving/, training/ does not
import serving/, and no module imports (even inside a function) a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "training", "serving")


def _imports() -> dict[str, set[str]]:
    """Project module -> the project modules it imports anywhere in its source (top level or in a function)."""
    mods = {f"{pkg}.{p.stem}": p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = _imports()
    assert "training.model_card" in graph["training.registry"]  # the check sees function-level imports too
    assert _cycles(graph) == []


# Known upward imports, each a reason: the benchmark scores tickets through the service's own runtime (what is
# served is what is measured) and refresh publishes the new snapshots to the online store's Redis.
UPWARD_ALLOWED = {("training.benchmark", "serving.app"), ("training.benchmark", "serving.schemas"),
                  ("training.refresh", "serving.online_store")}


def test_layers_import_downwards_only():
    graph = _imports()
    wrong = {(m, d) for m, deps in graph.items() for d in deps
             if (m.startswith("features.") and d.split(".")[0] in ("training", "serving"))
             or (m.startswith("training.") and d.startswith("serving."))}
    assert wrong - UPWARD_ALLOWED == set()


def test_the_checks_find_a_cycle_and_a_wrong_layer():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
