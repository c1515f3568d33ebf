"""The house's rules, read from the code's own imports (module level and inside functions alike)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("ray", "prefect", "mlflow")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> every module it imports (absolute names; ``from a import b`` counts as ``a`` and ``a.b``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tight_pipeline").rglob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[_module(path)] = found
    return graph


def _hits(found: set[str], prefixes) -> set[str]:
    return {m for m in found if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_the_library_never_imports_the_application_layer():
    wrong = {m: _hits(found, ["flows"]) for m, found in imports().items() if _hits(found, ["flows"])}
    assert not wrong, f"tight_pipeline must not import flows/: {wrong}"


def test_the_engine_knows_nothing_of_services_jobs_or_tracking():
    banned = [*SERVICES, "tight_pipeline.job", "tight_pipeline.tracking", "tight_pipeline.actor",
              "tight_pipeline.demo_model", "tight_pipeline.tiny_models", "tight_pipeline.scores"]
    wrong = {m: _hits(found, banned) for m, found in imports().items()
             if m.startswith("tight_pipeline.engine") and _hits(found, banned)}
    assert not wrong, f"engine/ imports above itself: {wrong}"


def test_only_the_factory_knows_every_engine():
    graph = imports()
    engines = ["tight_pipeline.engine.flux", "tight_pipeline.engine.passthrough", "tight_pipeline.engine.factory"]
    assert not _hits(graph["tight_pipeline.engine.runner"], engines)
    assert all(e in graph["tight_pipeline.engine.factory"] for e in engines[:2])


def test_no_import_cycles_between_library_modules():
    graph = imports()
    modules = set(graph)
    edges = {m: {t for t in modules if t != m and t in found} for m, found in graph.items()}
    # packages' __init__ re-exports are edges too; a cycle is a path back to where it started
    cycles = []

    def visit(node, stack, seen):
        for nxt in sorted(edges[node]):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], seen)

    for start in sorted(modules):
        visit(start, [start], {start})
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_tracking_takes_plain_values_not_job_types():
    graph = imports()
    wrong = _hits(graph["tight_pipeline.tracking"], ["tight_pipeline.job", "tight_pipeline.actor", *SERVICES[:2]])
    assert not wrong, f"tracking.py reaches into the job or the services: {wrong}"
