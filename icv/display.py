"""Outputs side by side in a terminal: one block per input, one labelled line per setting.

What ``icv generate`` (several strengths), ``icv eval --show`` and the recipes print.
Completions are long and settings few, so each setting gets a row (label, then the text
wrapped beside it) rather than a narrow column.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

WIDTH = 100


def side_by_side(
    inputs: Sequence[str] | None, columns: Mapping[str, Sequence[str]], *, width: int = WIDTH
) -> str:
    """``[1] input`` then ``label | output`` per column, labels aligned, long outputs wrapped.

    ``inputs=None`` prints the rows of a single prompt without a heading.  Line breaks
    inside an output are shown as `` / ``; an empty output as ``(empty)``.
    """
    label_width = max(len(label) for label in columns)
    rows = len(next(iter(columns.values())))
    indent = "" if inputs is None else "    "
    lines: list[str] = []
    for i in range(rows):
        if inputs is not None:
            lines.append(f"[{i + 1}] {inputs[i]}")
        for label, outputs in columns.items():
            answer = outputs[i].replace("\n", " / ") or "(empty)"
            wrapped = textwrap.wrap(answer, max(20, width - label_width)) or [answer]
            lines.append(f"{indent}{label:<{label_width}} | {wrapped[0]}")
            lines.extend(f"{indent}{'':<{label_width}} | {more}" for more in wrapped[1:])
        if inputs is not None:
            lines.append("")
    return "\n".join(lines)
