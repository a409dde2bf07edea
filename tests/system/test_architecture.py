"""The layers, checked from the source: no import from a lower layer to a higher one, no import cycle.

    pipeline  <-  sim, ops  <-  models  <-  runtime  <-  flows  <-  cli

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "sim", "ops", "models", "runtime", "flows", "cli", "schemas")
# What each package may import from the project, besides itself.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "pipeline": {"schemas"},
    "sim": {"pipeline"},
    "ops": {"pipeline", "schemas"},
    "models": {"pipeline", "sim"},
    "runtime": {"pipeline", "models"},
    "flows": {"pipeline", "sim", "ops", "models", "runtime"},
    "cli": {"pipeline", "sim", "ops", "models", "runtime", "flows"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file)."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_package_imports_a_higher_layer() -> None:
    wrong = [
        f"{mod} imports {dep}"
        for mod, deps in project_imports().items()
        for dep in deps
        if (a := mod.split(".")[0]) != (b := dep.split(".")[0]) and b not in ALLOWED[a]
    ]
    assert wrong == []


def test_no_import_cycle() -> None:
    graph = project_imports()
    # each module's own package is imported with it: `import a.b` runs a/__init__.py first
    for mod in list(graph):
        graph[mod] = {d for d in graph[mod] if not mod.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)


def test_settings_and_the_model_contract_load_without_torch() -> None:
    code = "import sys, pipeline.config, pipeline.model_contract; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
