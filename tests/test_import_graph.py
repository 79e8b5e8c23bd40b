"""The package's import graph has no cycles: data and control flow one way through ``icv/``.

Read from the source (``ast``), so that it covers what a run may never reach: every
``import`` and ``from ... import`` in a module counts, inside functions too (a cycle
through a function-level import is still a cycle, only a later one).  Imports under
``if TYPE_CHECKING:`` do not count: they never run, and exist for type checkers only.
Importing ``a.b.c`` from outside ``a.b`` also runs ``a/b/__init__.py``: that counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "icv"


def module_files(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (its file, whether it is a package's ``__init__``)."""
    modules = {}
    for file in sorted(package.rglob("*.py")):
        parts = list(file.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (file, is_package)
    return modules


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, here: list[str]) -> set[str]:
    """Dotted names of what ``tree`` imports (``here``: the package its relative imports start from)."""
    names: set[str] = set()
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from a import b` imports a.b when b is a module, else a name of a.
            names.update(f"{module}.{alias.name}" for alias in node.names)
            names.add(module)
        pending.extend(ast.iter_child_nodes(node))
    return names


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (directly, or as the packages that hold them)."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, (file, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets: set[str] = set()
        for imported in _imported_names(ast.parse(file.read_text(), str(file)), here):
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                # A package that holds `name` is initialised before it: no edge back to it.
                inside = name == target or name.startswith(target + ".")
                if target in modules and not inside:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its modules in import order, the first repeated at the end), or ``None``."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_imports_without_cycles():
    graph = import_graph()
    assert {"icv.cli.app", "icv.arguments", "icv.serving.command", "icv.vector"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_vector_files_are_read_and_written_one_way():
    graph = import_graph()
    assert "icv.storage" in graph["icv.vector"]
    assert "icv.vector" not in graph["icv.storage"]


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        # a function-level import closes the circle
        ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, True),
        # a type-only import does not
        ({"a.py": "from . import b\n", "b.py": "if TYPE_CHECKING:\n    from .a import x\n"}, False),
        # importing sub.c from outside runs sub/__init__.py, which imports a
        (
            {"a.py": "import pkg.sub.c\n", "sub/__init__.py": "from .. import a\n", "sub/c.py": ""},
            True,
        ),
        # a module of sub importing its own package is no cycle
        ({"sub/__init__.py": "from . import c\n", "sub/c.py": "from . import d\n", "sub/d.py": ""}, False),
        ({"sub/__init__.py": "from .c import x\n", "sub/c.py": "from ..sub import y\n"}, False),
    ],
)
def test_the_checker_sees_the_cycles_that_matter(tmp_path, files, cycle):
    package = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    assert (find_cycle(import_graph(package)) is not None) == cycle
