"""Prompt formats of the paper's paraphrase tasks: zero-shot, in-context (ICL), and the answer's cut."""

from __future__ import annotations

from collections.abc import Sequence

from .demos import Demo

PARAPHRASE_INSTRUCTION = "Please paraphrase the following sentence."


def _example(source: str) -> str:
    return f' Original: "{source}"; Paraphrased: "'


def paraphrase_prompt(text: str) -> str:
    """The zero-shot prompt the ICV replaces demonstrations in (the paper's format)."""
    return f"{PARAPHRASE_INSTRUCTION}\n{_example(text)}"


def icl_prompt(demos: Sequence[Demo], text: str) -> str:
    """The in-context-learning baseline: the same demonstrations written before the query."""
    shots = "".join(f"{_example(d.source)}{d.target}\"\n" for d in demos)
    return f"{PARAPHRASE_INSTRUCTION}\n{shots}{_example(text)}"


def cut_answer(completion: str) -> str:
    """The paraphrase inside a completion: up to the closing quote or the end of the line."""
    answer = completion.split('"', 1)[0].split("\n", 1)[0]
    return answer.strip()
