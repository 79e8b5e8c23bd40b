"""Choose every recipe's shipped strength with icv.calibrate (run once; the results go into run.py).

    python recipes/calibrate.py [NAME ...]

For each recipe: build its vector as run.py does, sweep strengths on a few held-in
inputs (not the ones run.py shows), and print icv.calibrate's table and choice.
Style is scored per recipe (VADER, the offensive-language classifier, or a small
marker check written here); content is MiniLM similarity to the input, with a
floor per recipe (answers to questions resemble the question less than rewrites
resemble their source); fluency is the repeated-3-gram share (at most 0.2).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_demos  # noqa: E402

import icv  # noqa: E402
from icv.prompts import chat_prompt, paraphrase_prompt  # noqa: E402
from icv.scorers import FunctionScorer, OffensiveScorer, Scorer, SentimentScorer  # noqa: E402

STRENGTHS = (0.03, 0.04, 0.05, 0.06, 0.07, 0.08)


def _share(pattern: str) -> Callable[[list[str], Any, Any], list[float]]:
    found = re.compile(pattern, re.IGNORECASE)
    return lambda outputs, _sources, _references: [1.0 if found.search(o) else 0.0 for o in outputs]


SLANG = r"\b(lol|u|ur|gonna|gotta|wanna|kinda|sooo*|af|ugh|thx|pls|dunno|lemme|tbh|like)\b|'|!"


def _formal(outputs: list[str], _sources: Any, _references: Any) -> list[float]:
    """Formal enough: a capitalised sentence with no slang, contraction or exclamation."""
    slang = re.compile(SLANG, re.IGNORECASE)
    return [1.0 if o[:1].isupper() and not slang.search(o) else 0.0 for o in outputs]


def _upper(outputs: list[str], _sources: Any, _references: Any) -> list[float]:
    letters = ["".join(c for c in o if c.isalpha()) for o in outputs]
    return [1.0 if len(l) >= 3 and sum(c.isupper() for c in l) / len(l) > 0.7 else 0.0 for l in letters]


ARCHAIC = (
    r"\b(thee|thou|thy|thine|hath|doth|art|ye|'tis|whither|wherefore|prithee|methinks|hark|\w+(est|eth))\b"
)
PIRATE = (
    r"\b(arr+|ahoy|matey|hearty|hearties|aye|ye|yer|landlubber|treasure|sail\w*|ship\w*|sea|captain|\w+in')\b"
)


@dataclass
class Setup:
    build: Callable[[Any, Any], icv.InContextVector]
    inputs: list[str]
    style: Scorer
    min_content: float
    chat: bool = False


def _plain(name: str, chat: bool = False) -> Callable[[Any, Any], icv.InContextVector]:
    def build(model: Any, tokenizer: Any) -> icv.InContextVector:
        template = icv.chat_reply_template(tokenizer) if chat else "{text}"
        return icv.extract(model, tokenizer, load_demos(name), name=name, template=template, progress=False)

    return build


def _positive_formal(model: Any, tokenizer: Any) -> icv.InContextVector:
    positive = _plain("sentiment")(model, tokenizer).with_metadata(recommended_strength=0.07)
    formal = _plain("compose_add")(model, tokenizer).with_metadata(recommended_strength=0.05)
    return positive + formal


def _not_rude(model: Any, tokenizer: Any) -> icv.InContextVector:
    return -_plain("compose_subtract")(model, tokenizer)


RUDE = [
    "Nobody cares about your boring stories, idiot.",
    "Fix your stupid website, it never works.",
    "You are the laziest, dumbest coworker I have.",
    "Get your ugly dog off my lawn.",
    "What a moronic thing to say.",
    "Your band is terrible, stop playing.",
]
QUESTIONS = [
    "How can I sleep better?",
    "What is a good breakfast?",
    "How do I learn to swim?",
    "What should I pack for a beach trip?",
    "How can I save money?",
    "Why do leaves change colour?",
]

SETUPS: dict[str, Setup] = {
    "sentiment": Setup(
        _plain("sentiment"),
        [
            "The waiter forgot our drinks twice.",
            "The bus was late again and the driver was grumpy.",
            "My new headphones broke after two days.",
            "The museum was boring and overcrowded.",
            "The steak was tough and overcooked.",
            "This hotel was noisy and the bed was awful.",
        ],
        SentimentScorer("positive"),
        0.6,
    ),
    "detox": Setup(_plain("detox"), RUDE, OffensiveScorer(), 0.6),
    "compose_subtract": Setup(_not_rude, RUDE, OffensiveScorer(), 0.6),
    "formality": Setup(
        _plain("formality"),
        [
            "yo, the meeting got moved to 3, k?",
            "omg i totally forgot ur birthday, sorry!!",
            "this pizza is sooo good lol.",
            "can't come today, feeling kinda sick.",
            "dude, where'd u put my keys?",
            "the boss was super mad at us.",
        ],
        FunctionScorer("formal", _formal),
        0.6,
    ),
    "shakespeare": Setup(
        _plain("shakespeare"),
        [
            "Why are you standing in the rain?",
            "I will wait for you by the river.",
            "Your father is looking for you.",
            "Do you really love her?",
            "The king is dead and the castle is burning.",
            "Leave me alone, I want to sleep.",
        ],
        FunctionScorer("archaic", _share(ARCHAIC)),
        0.55,
    ),
    "roleplay": Setup(
        _plain("roleplay", chat=True), QUESTIONS, FunctionScorer("pirate", _share(PIRATE)), 0.35, True
    ),
    "formatting": Setup(
        _plain("formatting", chat=True), QUESTIONS, FunctionScorer("upper_case", _upper), 0.35, True
    ),
    "compose_add": Setup(
        _positive_formal,
        [
            "the fries were soggy and the staff were kinda rude.",
            "ugh, our flight got delayed like 5 hours.",
            "the gym is dirty and always packed lol.",
            "the new album is pretty meh tbh.",
            "waited forever at the dentist, so annoying.",
            "the hotel breakfast was cold and gross.",
        ],
        FunctionScorer(
            "positive_and_formal",
            lambda o, s, r: [
                a * b for a, b in zip(SentimentScorer("positive").score(o), _formal(o, s, r), strict=True)
            ],
        ),
        0.55,
    ),
}


def main(names: list[str]) -> None:
    model, tokenizer = icv.load_model()
    for name in names or list(SETUPS):
        setup = SETUPS[name]
        prompt = (lambda q: chat_prompt(tokenizer, q)) if setup.chat else paraphrase_prompt
        vector = setup.build(model, tokenizer)
        calibrated, report = icv.calibrate(
            model,
            tokenizer,
            vector,
            setup.inputs,
            style=setup.style,
            strengths=STRENGTHS,
            min_content=setup.min_content,
            prompt=prompt,
            max_new_tokens=32,
            batch_size=len(setup.inputs) * 7,
            progress=False,
        )
        print(f"## {name}: chosen {calibrated.recommended_strength:g} (feasible: {report.feasible})")
        print(report.markdown(), "\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
