"""The house's rules, read from the code's own imports (module level and inside functions alike)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


# Each folder of tight_pipeline/ is one layer; a module may import its own layer and the ones this table allows
# (the package root holds settings, shared by all). flows/ (the app) sits on top and may import any of them.
P = "tight_pipeline."
LAYERS = {
    "method": {"method"},  # the engines, presets, automatic strength: the method only
    "data": {"data"},  # manifests, variants, storage, the scores dataset
    "reporting": {"reporting", "method", "data"},  # MLflow, sheets, plots
    "pipeline": {"pipeline", "method", "data", "reporting"},  # the Ray job and its worker
    "testing": {"testing", "method", "data", "demo_model"},  # random models of the real layouts
    "review": {"review", "data"},  # decisions about outputs, publishing what was approved
}
# the services each layer may talk to (no other layer imports Ray, Prefect or MLflow)
SERVICES_ALLOWED = {"pipeline": {"ray"}, "reporting": {"mlflow"}}


def _layer(module: str) -> str | None:
    rest = module.removeprefix(P)
    head = rest.split(".")[0]
    return head if module.startswith(P) and head in LAYERS else None


def test_every_layer_imports_only_the_layers_below_it():
    wrong = {}
    for module, found in imports().items():
        layer = _layer(module)
        if layer is None:
            continue
        bad = {m for m in found if m.startswith(P) and _layer(m) is not None and _layer(m) not in LAYERS[layer]}
        bad |= {m for m in found if m.startswith(P + "demo_model") and "demo_model" not in LAYERS[layer]}
        bad |= _hits(found, [s for s in SERVICES if s not in SERVICES_ALLOWED.get(layer, set())])
        if bad:
            wrong[module] = sorted(bad)
    assert not wrong, f"imports that run against the layers: {wrong}"


def test_the_product_never_imports_the_lab():
    """Training, evaluations and probes live in lab/ (``python -m lab``); the product and its CLI never reach them."""
    wrong = {}
    for path in [*sorted((ROOT / "tight_pipeline").rglob("*.py")), *sorted((ROOT / "flows").rglob("*.py"))]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
        if _hits(found, ["lab"]):
            wrong[str(path.relative_to(ROOT))] = sorted(_hits(found, ["lab"]))
    assert not wrong, f"the product imports the lab: {wrong}"


def test_the_package_root_holds_at_most_four_modules_and_every_layer_is_a_folder():
    root = ROOT / "tight_pipeline"
    modules = sorted(p.name for p in root.glob("*.py"))
    assert len(modules) <= 4, modules
    assert all((root / layer / "__init__.py").exists() for layer in LAYERS)


def test_the_registry_is_the_one_place_that_names_every_engine():
    from tight_pipeline.method import factory, specs

    assert set(factory.ENGINES) == set(specs.FAMILIES)
    for family, target in factory.ENGINES.items():
        cls = factory.engine_class(specs.ModelSpec(name="x", base="none", family=family))
        assert f"{cls.__module__}:{cls.__name__}" == target
        assert callable(cls.from_spec) and callable(cls.edit_items) and callable(cls.edit_item)
    # no library module imports an engine's module (only the tests' own engine subclasses one)
    engine_modules = sorted({t.partition(":")[0] for t in factory.ENGINES.values()})
    importers = {m for m, found in imports().items() if _hits(found, engine_modules)}
    assert importers <= {"tight_pipeline.testing.engines"}, importers
    # a spec may name its own engine; a wrong one is one line
    with pytest.raises(specs.ModelError, match="cannot be imported"):
        factory.engine_class(specs.ModelSpec(name="x", base="none", family="passthrough", engine="nowhere.mod:Engine"))
    with pytest.raises(specs.ModelError, match="must be 'package.module:Class'"):
        specs.ModelSpec(name="x", base="none", family="passthrough", engine="nowhere")


def test_the_product_has_no_test_hooks():
    """The fault drills' crashing engine is the tests' (testing/engines.py), loaded by a spec's engine field."""
    root = Path(__file__).resolve().parents[1] / "tight_pipeline"
    hooks = [p for p in root.rglob("*.py") if "testing" not in p.parts and "os._exit" in p.read_text()]
    assert not hooks, hooks


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
    wrong = _hits(graph["tight_pipeline.reporting.tracking"], ["tight_pipeline.pipeline.job", "tight_pipeline.pipeline.actor", *SERVICES[:2]])
    assert not wrong, f"reporting/tracking.py reaches into the job or the services: {wrong}"


def test_a_family_s_name_is_compared_only_in_its_own_loader_and_the_traits_table():
    """What other code needs of a family is a trait (``specs.FAMILY_TRAITS``), never ``family == "flux"``."""
    import re

    root = Path(__file__).resolve().parents[1] / "tight_pipeline"
    own = {"method/specs.py", "method/models.py", "method/engine.py"}  # the table, the loaders, the engine's guard
    found = [str(p.relative_to(root)) for p in root.rglob("*.py") if str(p.relative_to(root)) not in own
             and re.search(r"family\s*(==|!=|\bin\b|\bnot in\b)", p.read_text())]
    assert not found, found
