"""The API and the workers are not one knot: ``app`` talks to a queue port (``app/queue.py``)
that ``workers`` implements, so no import cycle spans both packages (lazy imports inside
functions count too, since they are how such knots hide), and the API loads without Celery."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "workers", "ml")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in its body."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import sub`` is an edge to pkg.sub, not to pkg's __init__.
                names = [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                target = resolve(n)
                if target and target != m:
                    graph[m].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]


def test_no_import_cycle_spans_app_and_workers() -> None:
    spanning = [
        sorted(c)
        for c in cycles(import_graph())
        if any(m.startswith("app") for m in c) and any(m.startswith("workers") for m in c)
    ]
    assert spanning == []


def test_no_import_cycle_inside_app_or_ml() -> None:
    inner = [
        sorted(c) for c in cycles(import_graph()) if not any(m.startswith("workers") for m in c)
    ]
    assert inner == []


def test_the_api_loads_without_celery() -> None:
    """Building the app on the embedded default imports neither Celery nor the Celery app."""
    code = (
        "import sys\n"
        "from app.main import create_app\n"
        "from app.settings import Settings\n"
        "create_app(Settings(database_url='sqlite://', broker_url='embedded'))\n"
        "print(sorted(m for m in sys.modules if m == 'celery' or m.startswith('workers.celery')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
