"""The shape of the code, held by tests so a change cannot quietly undo it.

Read from the source with ``ast`` (nothing is imported): module sizes, the direction of
imports inside ``bridge``, what may import the simulator, and that every test says what it
pins.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450  # past this a module holds more than one concept: split it by concept

# Who may import whom, where one owner is the point: the command line drives the service,
# the service drives one term's pipeline, and nothing reaches back up.
ONLY_IMPORTED_BY = {
    "bridge.cli": set[str](),
    "bridge.service": {"bridge.cli"},
    "bridge.pipeline": {"bridge.service"},
    "livestream_sim": {"bridge.cli"},  # the `simulate` command, lazily
}
# The bottom of the house: settings, the exception hierarchy and the secrets rule.
FOUNDATION = {"bridge.config", "bridge.errors", "bridge.secrets"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every bridge or simulator module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n.split(".")[0] in ("bridge", "livestream_sim")}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _package_files() -> list[Path]:
    return sorted([*(ROOT / "bridge").rglob("*.py"), *(ROOT / "livestream_sim").rglob("*.py")])


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in _package_files()}


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outgrows_one_concept(path: Path) -> None:
    """Every module of the service and the simulator stays under 450 lines."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_imports_inside_bridge_flow_one_way() -> None:
    """The bridge's modules import each other without a cycle (cli -> service -> parts ->
    config), so each can be read knowing only what is below it."""
    graph = {m: {d for d in deps if d.startswith("bridge")} for m, deps in _graph().items()}
    graph = {m: deps - {m, "bridge"} for m, deps in graph.items() if m.startswith("bridge")}
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in path, "import cycle: " + " -> ".join([*path, module])
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "bridge.pipeline" in done  # the walk saw the package, not an empty tree


def test_each_layer_is_imported_only_from_above() -> None:
    """Only the CLI imports the service, only the service the pipeline, only the CLI the
    simulator, and the settings, errors and secrets import nothing else of the bridge."""
    graph = _graph()
    for target, allowed in ONLY_IMPORTED_BY.items():
        importers = {
            m
            for m, deps in graph.items()
            if not _within(m, target) and any(_within(d, target) for d in deps)
        }
        assert importers <= allowed, f"{target} imported by {sorted(importers - allowed)}"
    for module in FOUNDATION:
        below = {d for d in graph[module] if d != "bridge"}
        assert below <= FOUNDATION, f"{module} imports {sorted(below - FOUNDATION)}"


def test_the_simulator_needs_nothing_of_the_bridge() -> None:
    """livestream_sim stands alone: it plays Adobe, so it shares no code with the client."""
    leaks = {m: deps for m, deps in _graph().items() if m.startswith("livestream_sim")}
    leaks = {m: {d for d in deps if d.startswith("bridge")} for m, deps in leaks.items()}
    assert not any(leaks.values()), leaks


def test_every_test_says_what_it_pins() -> None:
    """Every test function carries a docstring naming the behaviour it holds."""
    silent = [
        f"{path.name}:{node.lineno} {node.name}"
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and not ast.get_docstring(node)
    ]
    assert not silent, silent
