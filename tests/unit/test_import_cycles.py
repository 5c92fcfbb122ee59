"""No import cycles among shared's modules (DESIGN.md: "No import cycles").

The graph is built from the source with `ast`, not by importing: every `import` and `from ... import`
counts, at module level or inside a function (a late import hides a cycle from the interpreter, not from
the design), except those under `if TYPE_CHECKING:`, which never run.

An import names the module it loads: `from shared.cli import send` names shared.cli.send when that is a
module, and shared.cli when `send` is a name the package defines. The parent packages that Python
initialises on the way (shared/cli/__init__.py before shared.cli.common) are not edges: a package that
imports its own submodules is how it exports them; a submodule that imports a name from its package is
a cycle, and is found.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).parents[2]

Graph = dict[str, dict[str, list[str]]]  # module -> imported module -> where ("path:line")


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Each module of `package` under `root` by its dotted name; a package by its __init__.py."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import under `node`, at any depth, except in the body of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for branch in child.orelse:  # `else:` runs
                if isinstance(branch, ast.Import | ast.ImportFrom):
                    yield branch
                yield from _imports(branch)
        else:
            yield from _imports(child)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` loads: itself, or its longest prefix that is a module (`a.b.attr` -> `a.b`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return {target for name in names if (target := _known(name, modules)) is not None}


def import_graph(root: Path, package: str) -> Graph:
    modules = module_names(root, package)
    graph: Graph = {name: {} for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", modules):
                if target != module:
                    graph[module].setdefault(target, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each group of modules that import one another (Tarjan's strongly connected
    components of more than one module), each as a path that starts and ends at its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_path_within(graph, component) for component in components)


def _path_within(graph: Graph, component: list[str]) -> list[str]:
    """The shortest cycle from the component's first module back to it, by breadth-first search."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def describe(graph: Graph, cycle: list[str]) -> str:
    steps = [f"{a} -> {b} ({', '.join(graph[a][b])})" for a, b in pairwise(cycle)]
    return "\n  ".join(steps)


# --- The rule, on shared/ ------------------------------------------------------------------------


def test_shared_has_no_import_cycle() -> None:
    graph = import_graph(ROOT, "shared")
    found = cycles(graph)
    assert not found, "import cycles in shared/:\n  " + "\n\n  ".join(describe(graph, c) for c in found)


def test_nothing_bootstrap_builds_imports_it_back() -> None:
    """bootstrap builds the clients and passes them in: the expiry package takes them as arguments."""
    graph = import_graph(ROOT, "shared")
    assert "shared.expiry.check" in graph  # the graph sees the expiry package's modules
    assert not [name for name in graph if name.startswith("shared.expiry") and "shared.bootstrap" in graph[name]]


def test_the_cli_package_does_not_import_itself_back() -> None:
    graph = import_graph(ROOT, "shared")
    cli = [name for name in graph if name.startswith("shared.cli.")]
    assert "shared.cli.common" in graph["shared.cli.send"]  # the graph sees the package's modules
    assert not [name for name in cli if "shared.cli" in graph[name]]
    assert not any(c for c in cycles(graph) if any(m.startswith("shared.cli") for m in c))


# --- The graph itself, on a made-up package ------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_an_import_inside_a_function_closes_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import thing\n",
        "pkg/b.py": "def thing():\n    from pkg import a\n    return a\n",
        "pkg/c.py": "import pkg.a\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert describe(graph, ["pkg.a", "pkg.b", "pkg.a"]) == (
        "pkg.a -> pkg.b (pkg/a.py:1)\n  pkg.b -> pkg.a (pkg/b.py:2)"
    )


def test_type_checking_imports_are_not_edges_but_its_else_branch_is(tmp_path: Path) -> None:
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nimport pkg.b\n",
        "pkg/b.py": (
            "import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import X\n"
            "if TYPE_CHECKING:\n    import pkg.a\nelse:\n    import pkg.c\n"
        ),
        "pkg/c.py": "",
    })
    graph = import_graph(tmp_path, "pkg")
    assert cycles(graph) == []
    assert set(graph["pkg.b"]) == {"pkg.c"}


def test_a_submodule_importing_a_name_from_its_package_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import main\n",
        "pkg/sub/__init__.py": "from pkg.sub.parser import main\n",
        "pkg/sub/parser.py": "from pkg.sub import common\n\ndef main(): ...\n",
        "pkg/sub/common.py": "from . import helpers\nfrom .helpers import x\nfrom .. import sub\n",
        "pkg/sub/helpers.py": "x = 1\n",
    })
    graph = import_graph(tmp_path, "pkg")
    # A package importing its submodules, and relative imports of submodules: no cycle.
    assert set(graph["pkg.sub.parser"]) == {"pkg.sub.common"}
    assert set(graph["pkg.sub.common"]) == {"pkg.sub.helpers", "pkg.sub"}
    # `from .. import sub` names the package pkg.sub, which imports parser, which imports common.
    assert cycles(graph) == [["pkg.sub", "pkg.sub.parser", "pkg.sub.common", "pkg.sub"]]
