"""No import cycle among the project's modules, nor between its rooms (sub-packages).

Every ``import`` statement counts, including those inside functions (a lazy import still ties
two modules together); imports under ``if TYPE_CHECKING:`` do not, since they never run. A
package's ``__init__`` importing its own submodules is how a package exposes them, not a cycle.
Rooms are the top-level packages and streamtmr's direct children (``streamtmr.models``,
``streamtmr.train``, ``streamtmr.cli`` …); two rooms must not import each other.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streamtmr", "engines", "sensors", "bench")


def project_modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _import_statements(tree: ast.AST):
    """Import nodes that run: everything except the body of ``if TYPE_CHECKING``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Names an import statement may refer to (``from a import b``: ``a.b`` or ``a``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        anchor = here[: len(here) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" for a in node.names] + [base]


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (its own submodules excluded for packages)."""
    mods = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        deps = set()
        for node in _import_statements(ast.parse(path.read_text(), str(path))):
            for target in _targets(name, is_package, node):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not target.startswith(name + "."):
                    deps.add(target)
        graph[name] = deps
    return graph


def room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "streamtmr" and len(parts) > 1 else parts[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert len(graph) > 50
    assert "streamtmr.skeleton" in graph["streamtmr.losses.physical"]
    assert "engines.onnx_export" in graph["engines.source"]  # imported inside a method
    assert "engines.source" not in graph["engines.onnx_export"]  # only under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None


def test_no_import_cycle_among_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_two_rooms_import_each_other(package):
    rooms: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        rooms.setdefault(room(module), set()).update(room(d) for d in deps)
    mutual = sorted(f"{a} <-> {b}" for a in rooms if a.startswith(package)
                    for b in rooms[a] if b != a and a in rooms.get(b, ()))
    assert not mutual, f"rooms importing each other: {mutual}"
