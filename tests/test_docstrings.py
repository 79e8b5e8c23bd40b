"""Every public function, class and method documents every parameter in a Google-style ``Args:`` section.

The API reference (mkdocstrings, Google style) is built from these sections; a
parameter added without a line there fails here, and so does a line left for a
parameter that is gone.  Public: the names in ``icv.__all__``, and the public methods
of its classes (a class's constructor may be documented in the class's docstring or
in ``__init__``'s).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import icv

SECTION = re.compile(r"^(Args|Arguments|Parameters):\s*$")
ENTRY = re.compile(r"^(\*{0,2})(\w+)\s*(\([^)]*\))?\s*:")


def documented(doc: str | None) -> set[str] | None:
    """The parameter names an ``Args:`` section lists (``None``: no such section)."""
    if not doc:
        return None
    names: set[str] | None = None
    indent: int | None = None
    for line in inspect.cleandoc(doc).splitlines():
        if SECTION.match(line):
            names, indent = set(), None
            continue
        if names is None or not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:  # the next section (Returns:, Raises: ...) or prose
            break
        indent = depth if indent is None else indent
        if depth == indent and (entry := ENTRY.match(line.lstrip())):
            names.add(entry.group(2))
    return names


def parameters(function: Callable[..., object], bound: bool) -> set[str]:
    names = list(inspect.signature(inspect.unwrap(function)).parameters)
    return set(names[1:] if bound else names)


def public_callables() -> Iterator[tuple[str, Callable[..., object], str | None, bool]]:
    """``(name, function, the docstring that documents it, whether its first parameter is bound)``."""
    for name in icv.__all__:
        if name == "__version__":
            continue
        obj = getattr(icv, name)
        if not inspect.isclass(obj):
            yield name, obj, obj.__doc__, False
            continue
        init = obj.__dict__.get("__init__")
        if init is not None:  # a constructor of icv's own (exceptions inherit theirs)
            doc = obj.__doc__ if documented(obj.__doc__) is not None else init.__doc__
            yield f"{name}()", init, doc, True
        for attribute, value in vars(obj).items():
            if attribute.startswith("_"):
                continue
            if isinstance(value, (classmethod, staticmethod)):
                function = value.__func__
                yield f"{name}.{attribute}", function, function.__doc__, isinstance(value, classmethod)
            elif inspect.isfunction(value):
                yield f"{name}.{attribute}", value, value.__doc__, True


PUBLIC = sorted(public_callables(), key=lambda item: item[0])


@pytest.mark.parametrize(("name", "function", "doc", "bound"), PUBLIC, ids=[p[0] for p in PUBLIC])
def test_every_parameter_is_documented(name, function, doc, bound):
    wanted = parameters(function, bound)
    listed = documented(doc) or set()
    assert wanted - listed == set(), f"{name}: no Args entry for {sorted(wanted - listed)}"
    assert listed - wanted == set(), f"{name}: Args lists {sorted(listed - wanted)}, not parameters"


def test_the_public_surface_is_covered():
    names = {name for name, *_ in PUBLIC}
    assert {"extract", "steer", "InContextVector()", "InContextVector.load", "Steering()"} <= names


def test_the_check_sees_a_missing_or_stale_entry():
    def fine(a: int, *, b: int = 0, **rest: int) -> None:
        """Summary.

        Args:
            a: first.
            b (int): second,
                on two lines.
            **rest: more.

        Returns:
            Nothing.
        """

    def missing(a: int, b: int) -> None:
        """Summary mentioning ``b`` in prose.

        Args:
            a: first.
        """

    assert parameters(fine, bound=False) == documented(fine.__doc__) == {"a", "b", "rest"}
    assert documented(missing.__doc__) == {"a"} != parameters(missing, bound=False)
    assert documented("Prose only, about ``a``.") is None


def reference_entries() -> list[str]:
    """The names docs/api.md renders (``::: name`` lines)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    return re.findall(r"^::: ([\w.]+)\s*$", page, flags=re.MULTILINE)


def resolve(dotted: str) -> object:
    """``dotted`` as mkdocstrings reads it: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ImportError(dotted)


# Whole modules on purpose: every name in them is public.
WHOLE_MODULES = {"icv.errors"}


def test_the_api_reference_renders_the_public_names_themselves():
    # `::: icv.extract` is the module icv/extract.py (helpers and all), not the function
    # icv.extract; a name assigned rather than defined renders as `name = call(...)`.
    entries = reference_entries()
    assert "icv.extract.extract" in entries and "icv.steer.steer" in entries
    for entry in entries:
        target = resolve(entry)
        if entry in WHOLE_MODULES:
            assert inspect.ismodule(target), entry
            continue
        assert inspect.isfunction(target) or inspect.isclass(target), f"{entry} is not a def or a class"
        assert target.__name__ in defined_names(target.__module__), (
            f"{entry}: no `def` or `class` {target.__name__} in {target.__module__} (the reference reads the source)"
        )


def defined_names(module: str) -> set[str]:
    """The functions and classes a module's source defines at its top level."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in tree.body if isinstance(node, kinds)}
