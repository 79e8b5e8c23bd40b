"""The name this package is installed under, for the messages that tell users what to install.

The import name is ``icv``; the distribution on the package index is ``in-context-vectors``
(``icv`` there is an unrelated project), so an installed package's messages name the latter.
"""

from __future__ import annotations

DISTRIBUTION = "in-context-vectors"


def pip_install(extra: str | None = None) -> str:
    """The pip command that installs this package, with one of its extras.

    Args:
        extra: the extra's name (``"vllm"``, ``"eval"`` ...), or ``None`` for the package alone.

    Returns:
        A shell command such as ``pip install 'in-context-vectors[vllm]'``.
    """
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {DISTRIBUTION}"
