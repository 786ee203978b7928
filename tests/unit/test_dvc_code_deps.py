"""dvc.yaml's code deps cover the modules each step imports: a stage DVC does not re-run
when code that shapes its artifact changes would serve stale bytes."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import grimp
import yaml

from trtflow.backends import REGISTRY
from trtflow.plan import STEPS

ROOT = Path(__file__).resolve().parents[2]
# Modules that never shape an artifact's bytes: the schema and its checks, errors, the
# store and key machinery, the context that hands params to a step.
INFRASTRUCTURE = {"trtflow.params", "trtflow.errors", "trtflow.store", "trtflow.stage",
                  "trtflow.names", "trtflow.yamlfile", "trtflow.atomic", "trtflow.budget",
                  "trtflow.context", "trtflow.plan"}


def _function_imports(fn: object) -> set[str]:
    """The trtflow modules a step function imports: its own (function-level) imports, and
    its module's when the module is a stage's own (not the plan, which imports them all)."""
    module = inspect.getmodule(fn)
    assert module is not None
    found = {module.__name__}
    tree = ast.parse(inspect.getsource(fn if module.__name__ == "trtflow.plan" else module))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("trtflow")}


def _closure(graph: grimp.ImportGraph, modules: set[str]) -> set[str]:
    """Everything `modules` import, transitively, not looking past infrastructure."""
    todo = [m for m in modules if m in graph.modules and m not in INFRASTRUCTURE]
    seen = set(todo)
    while todo:
        for imported in graph.find_modules_directly_imported_by(todo.pop()):
            if imported.startswith("trtflow") and imported not in seen | INFRASTRUCTURE:
                seen.add(imported)
                todo.append(imported)
    return seen


def _path(module: str) -> str:
    rel = module.replace(".", "/")
    return f"{rel}/__init__.py" if (ROOT / rel).is_dir() else f"{rel}.py"


def test_each_dvc_stage_lists_the_code_its_step_imports() -> None:
    graph = grimp.build_graph("trtflow", exclude_type_checking_imports=True,
                              cache_dir=None)  # no .grimp_cache/ left in the repository
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing: dict[str, list[str]] = {}
    for name, step in STEPS.items():
        deps = stages[name].get("deps") or stages[name]["do"]["deps"]
        code = [d.rstrip("/") for d in deps if d.startswith("trtflow")]
        modules = _function_imports(step.produce)
        if name == "build":  # the backends are found through the registry, not imported
            modules |= {where.partition(":")[0] for where in REGISTRY.values()}
        needed = _closure(graph, modules) - INFRASTRUCTURE
        uncovered = sorted(
            _path(m) for m in needed
            if not any(_path(m) == d or _path(m).startswith(d + "/") for d in code))
        if uncovered:
            missing[name] = uncovered
    assert missing == {}, f"dvc.yaml deps miss code the step imports: {missing}"
