"""The package's import graph, read with ``ast``: every import counts (top-level, function-local and
``TYPE_CHECKING`` ones), so a cycle cannot hide behind a deferred import."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "synthaug"

# Cycles allowed to remain: none. The test fails on any cycle, and on a listed one that is gone, so this list
# only shrinks.
KNOWN_CYCLES: set[frozenset[str]] = set()

# The modules that may import the runner: the command line and the package's public API (synthaug/__init__.py
# names it lazily, by string). Nothing the runner uses imports it back.
RUNNER_USERS = {"synthaug.cli", "synthaug.tuning.cli", "synthaug.report.cli"}

# Private members of other libraries that a module may use, each with its reason.
ALLOWED_PRIVATE: dict[str, str] = {
    "pipe.config._name_or_path": "diffusers keeps the folder or hub id a pipeline was loaded from only there",
    "AcceleratorState._shared_state": "accelerate's process-state singleton: cleared so one process can train "
                                      "twice (accelerate's own tests do the same)",
    "AcceleratorState._reset_state": "the same singleton's reset",
    "nn.modules.batchnorm._BatchNorm": "torch's common base of BatchNorm1d/2d/3d and SyncBatchNorm (no public "
                                       "alias)",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``; ``from pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``."""
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in files else stem
                           for alias in node.names]
            for target in targets:
                while target and target not in files:  # `import synthaug.data.x as y` names a module
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE) and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_through_a_function_local_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == {frozenset("abc")}


def test_no_new_import_cycles():
    found = cycles(import_graph())
    new = found - KNOWN_CYCLES
    assert not new, "import cycle(s) among synthaug modules: " + "; ".join(
        " <-> ".join(sorted(c)) for c in sorted(new, key=sorted))
    gone = KNOWN_CYCLES - found
    assert not gone, f"remove the cycle(s) that no longer exist from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


@pytest.mark.parametrize("light", ["synthaug.config", "synthaug.plan", "synthaug.report.tables",
                                   "synthaug.report.results"])
def test_light_modules_import_no_torch(light):
    """Validating a config, planning and rendering reports never import torch (checked in a fresh process)."""
    import subprocess
    import sys

    code = f"import sys, {light}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{light} imports torch"


def test_nothing_outside_the_runner_imports_it():
    graph = import_graph()
    users = {m for m, targets in graph.items() if not m.startswith("synthaug.runner")
             and any(t == "synthaug.runner" or t.startswith("synthaug.runner.") for t in targets)}
    assert users <= RUNNER_USERS, f"only the command line may import the runner; also: {sorted(users - RUNNER_USERS)}"


def private_uses(path: Path) -> list[str]:
    """``line: obj._name`` for every attribute access with a single leading underscore on anything but ``self``,
    ``cls``, ``super()`` or a class the module defines itself (dunder names are not private)."""
    tree = ast.parse(path.read_text(), str(path))
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in {"self", "cls", *own}:
            continue
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
            continue
        text = ast.unparse(node)
        if text not in ALLOWED_PRIVATE:
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {text}")
    return found


def test_the_private_member_check_finds_a_reach_into_another_object(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("class A:\n    def f(self, other):\n        return self._x, A._y, other._z, other.__class__\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        assert private_uses(module) == ["m.py:3: other._z"]
    finally:
        SRC = saved


def test_no_module_reaches_into_another_objects_private_members():
    found = [use for path in sorted((SRC / PACKAGE).rglob("*.py")) for use in private_uses(path)]
    assert not found, "private members used across objects (make them public, or hand the value over):\n" + \
        "\n".join(found)
