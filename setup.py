"""The package page on the index is the README without what only works inside the repository.

Everything else is declared in setup.cfg.  The README's relative links (to docs/, LICENSE) and
images would point nowhere on the package index, and the docs site's include markers mean nothing
there: links become their text, relative images and markers go.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup

RELATIVE_IMAGE = re.compile(r"!\[[^\]]*\]\((?!https?://)[^)]*\)\n?")
RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)[^)]*\)")
INCLUDE_MARKER = re.compile(r"^<!-- --8<-- \[(?:start|end):[\w-]+\] -->\n", flags=re.M)


def package_page(readme: str) -> str:
    """``readme`` for the package index: no relative links, images or docs include markers."""
    text = RELATIVE_IMAGE.sub("", readme)
    text = RELATIVE_LINK.sub(r"\1", text)
    return INCLUDE_MARKER.sub("", text)


if __name__ == "__main__":
    readme = Path(__file__).with_name("README.md").read_text(encoding="utf-8")
    setup(long_description=package_page(readme), long_description_content_type="text/markdown")
