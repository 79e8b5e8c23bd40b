"""Unknown keyword arguments of public functions become a clear :class:`UnknownOptionError`.

Python's own ``TypeError: got an unexpected keyword argument`` is easy to miss
in a long traceback and says nothing about what was meant; the decorator keeps
the function's real signature (for editors and type checkers) and only turns a
misspelt keyword into an error that names it, suggests the closest option and
lists the valid ones.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from .errors import UnknownOptionError

P = ParamSpec("P")
R = TypeVar("R")

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def checked_options(function: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``function`` so that an unknown keyword raises :class:`UnknownOptionError`."""
    parameters = inspect.signature(function).parameters
    names = [name for name, p in parameters.items() if p.kind in _NAMED]
    known = frozenset(names)
    options = [name for name in names if parameters[name].default is not inspect.Parameter.empty]
    label = f"icv.{function.__name__}()"

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for key in kwargs:
            if key not in known:
                raise UnknownOptionError(unknown_option_message(label, key, names, options))
        return function(*args, **kwargs)

    return wrapper


def unknown_option_message(label: str, key: str, names: list[str], options: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{label} has no option '{key}'{hint}; its options are: {', '.join(options)}"
