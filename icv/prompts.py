"""Prompt formats: the paper's paraphrase tasks (zero-shot, in-context, the answer's cut) and chat turns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .demos import Demo
from .errors import OptionError

PARAPHRASE_INSTRUCTION = "Please paraphrase the following sentence."


def _example(source: str) -> str:
    return f' Original: "{source}"; Paraphrased: "'


def paraphrase_prompt(text: str) -> str:
    """The zero-shot prompt the ICV replaces demonstrations in (the paper's format)."""
    return f"{PARAPHRASE_INSTRUCTION}\n{_example(text)}"


def icl_prompt(demos: Sequence[Demo], text: str) -> str:
    """The in-context-learning baseline: the same demonstrations written before the query."""
    shots = "".join(f'{_example(d.source)}{d.target}"\n' for d in demos)
    return f"{PARAPHRASE_INSTRUCTION}\n{shots}{_example(text)}"


# Where a paraphrase ends inside a completion: its closing quote, or the end of the line.
ANSWER_ENDS = ('"', "\n")


def cut_answer(completion: str) -> str:
    """The paraphrase inside a completion: up to the closing quote or the end of the line."""
    answer = completion
    for end in ANSWER_ENDS:
        answer = answer.split(end, 1)[0]
    return answer.strip()


# -- chat formats ----------------------------------------------------------------------

DEFAULT_REQUEST = "Say something."


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
        raise OptionError(
            "this model's tokenizer has no chat template (a base model, such as Gemma 3 270M, has "
            "none): use plain text, or give a template of your own"
        )


def chat_prompt(tokenizer: Any, text: str) -> str:
    """``text`` as one user turn of the tokenizer's chat template, ready for the assistant's reply."""
    _require_chat_template(tokenizer)
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_reply_template(tokenizer: Any, request: str = DEFAULT_REQUEST) -> str:
    """An extraction template that reads each demonstration text as the assistant's reply in a chat.

    ``icv.extract(model, tok, demos, template=icv.chat_reply_template(tok))``: every source
    and target is read where a chat model writes its answer (after ``request`` as the user
    turn), which is where a vector that steers chat answers (a persona, a format) is used.
    The text is the last thing in the template, so its last token is the one read.

    Args:
        tokenizer: a tokenizer with a chat template.
        request: the user turn before each reply.

    Returns:
        The template, with ``{text}`` where each demonstration text goes.
    """
    escaped = chat_prompt(tokenizer, request).replace("{", "{{").replace("}", "}}")
    return escaped + "{text}"
