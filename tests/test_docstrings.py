"""Every public function, class and method documents every parameter in a Google-style ``Args:`` section.

The API reference (mkdocstrings, Google style) is built from these sections; a
parameter added without a line there fails here, and so does a line left for a
parameter that is gone.  Public: the names in ``icv.__all__``, and the public methods
of its classes (a class's constructor may be documented in the class's docstring or
in ``__init__``'s).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator

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
