"""The package's import graph has no cycle (so import order never matters), module-level imports
and deferred ones alike.

The module-level graph counts the imports that run when a module is imported: top-level statements
(including ``try`` and plain ``if`` blocks), not imports inside functions and not
``if TYPE_CHECKING:`` blocks. The full graph (``deferred=True``) counts every import statement of the
source as well: inside functions and under ``if TYPE_CHECKING:``, each statement to the module it
names. Importing ``a.b.c`` at module level also runs ``a/__init__.py`` and ``a/b/__init__.py``, so in
the module-level graph those count too, except for the packages that contain the importer (Python has
already started them). The model package also defers no ``hxpe`` import into
a function without a stated reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "hxpe"
PACKAGE = PACKAGE_DIR.name

# hxpe imports inside functions of the model package, (module, function) -> why (none today).
DEFERRED_MODEL_IMPORTS: dict[tuple[str, str], str] = {}


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of the package."""
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run on import (recursing into try/if/with, not into defs)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level(node.body)
            found += _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _module_level(block)
        elif isinstance(node, ast.With):
            found += _module_level(node.body)
    return found


def _with_parents(target: str, importer: str, modules: dict[str, Path]) -> set[str]:
    """``target`` and the packages above it that importing it runs (not the importer's own)."""
    parts = target.split(".")
    out = set()
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in modules:
            continue
        if i < len(parts) and (importer == name or importer.startswith(name + ".")):
            continue  # a package that contains the importer is already being initialised
        out.add(name)
    return out


def _every_import(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the source: in functions and ``if TYPE_CHECKING:`` blocks too."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def imports_of(
    module: str, path: Path, modules: dict[str, Path], deferred: bool = False
) -> set[str]:
    """The package's modules that importing ``module`` imports directly (``deferred``: or that
    any of its statements imports, in functions and type-checking blocks included)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in _every_import(tree) if deferred else _module_level(tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
            # ``from pkg import sub`` imports the submodule when ``sub`` is one.
            targets += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        for target in targets:
            if deferred and target in modules:
                out.add(target)
            elif target == PACKAGE or target.startswith(PACKAGE + "."):
                out |= _with_parents(target, module, modules)
    out.discard(module)
    return out


def import_graph(package_dir: Path = PACKAGE_DIR, deferred: bool = False) -> dict[str, set[str]]:
    modules = module_files(package_dir)
    return {name: imports_of(name, path, modules, deferred) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete cycle through the smallest module of a strongly connected component (BFS)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_graph_sees_the_known_edges():
    graph = import_graph()
    assert "hxpe.agent.config" in graph["hxpe.config"]
    assert "hxpe.agent" in graph["hxpe.config"]  # importing hxpe.agent.config runs its __init__
    assert "hxpe.agent.describe" in graph["hxpe.agent"]
    assert "hxpe.agent" not in graph["hxpe.agent.describe"]  # its own package: already started


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import hxpe.hashing\n", {"hxpe.hashing"}),
        ("from hxpe.agent import cache\n", {"hxpe.agent", "hxpe.agent.cache"}),
        ("def f():\n    import hxpe.hashing\n", set()),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hxpe.hashing\n", set()),
        ("try:\n    import hxpe.hashing\nexcept ImportError:\n    pass\n", {"hxpe.hashing"}),
    ],
)
def test_imports_of_counts_module_level_imports_only(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    modules = module_files(PACKAGE_DIR)
    assert imports_of("hxpe.probe", path, modules) == expected
    every = imports_of("hxpe.probe", path, modules, deferred=True)
    assert every == (expected or {"hxpe.hashing"})  # deferred: the function's and TYPE_CHECKING's


def test_package_has_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_package_has_no_import_cycle_deferred_imports_included():
    cycles = find_cycles(import_graph(deferred=True))
    assert cycles == [], "import cycles (deferred imports counted):\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_deferred_imports_make_a_cycle_the_module_level_graph_misses(tmp_path):
    package = tmp_path / "hxpe"
    (package / "m").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "m/__init__.py": "",
        "m/a.py": "from hxpe.m.b import f\n",
        "m/b.py": "def f():\n    from .c import g\n    return g\n",
        "m/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hxpe.m import a\n",
    }
    for rel, text in sources.items():
        (package / rel).write_text(text)
    assert find_cycles(import_graph(package)) == []
    assert find_cycles(import_graph(package, deferred=True)) == [
        ["hxpe.m.a", "hxpe.m.b", "hxpe.m.c", "hxpe.m.a"]
    ]
    assert deferred_hxpe_imports(package / "m", "hxpe.m") == {("hxpe.m.b", "f"): 2}


def deferred_hxpe_imports(directory: Path, prefix: str) -> dict[tuple[str, str], int]:
    """(module, function) -> line of every ``hxpe`` import inside a function under ``directory``."""
    found = {}
    for path in sorted(directory.rglob("*.py")):
        rel = path.relative_to(directory).with_suffix("").parts
        module = ".".join([prefix, *(rel[:-1] if rel[-1] == "__init__" else rel)])
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [("." * node.level) + (node.module or "")]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n.startswith(("hxpe", ".")) for n in names):
                    found[(module, fn.name)] = node.lineno
    return found


def test_model_package_defers_no_hxpe_import_without_a_reason():
    found = deferred_hxpe_imports(PACKAGE_DIR / "model", "hxpe.model")
    unstated = sorted(set(found) - set(DEFERRED_MODEL_IMPORTS))
    assert unstated == [], "hxpe imports inside functions of hxpe/model, with no reason given: " + (
        ", ".join(f"{m}.{f} (line {found[(m, f)]})" for m, f in unstated)
    )


def test_model_package_does_not_import_the_data_package():
    """The data package owns the loader's batch keys (``IndexBatch``); the model takes explicit
    inputs."""
    graph = import_graph()
    edges = sorted(
        (module, target)
        for module, targets in graph.items()
        if module.startswith("hxpe.model")
        for target in targets
        if target == "hxpe.data" or target.startswith("hxpe.data.")
    )
    assert edges == []
