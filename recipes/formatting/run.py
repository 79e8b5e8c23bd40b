"""Formatting: the chat model answers in UPPER CASE."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_one_vector_recipe  # noqa: E402

# A bullet-list vector (18 prose -> "- item" pairs) was tried first: it only lower-cased the
# answers, so the recipe uses upper case.  icv.calibrate (python recipes/calibrate.py formatting:
# 6 held-in questions, 0.03-0.08, "upper case" = over 70% capital letters in the first line,
# MiniLM similarity to the question >= 0.35) chose 0.03: 2 of 6 answers in capitals at similarity
# 0.39; from 0.04 every answer is in capitals but off topic (similarity 0.1) and repetitive.
STRENGTH = 0.03

QUESTIONS = [
    "How do I make a cup of tea?",
    "Why is exercise good for you?",
    "What should I do on a rainy day?",
]


def main() -> None:
    run_one_vector_recipe(
        HERE, __doc__, name="upper_case", label="UPPER CASE", strength=STRENGTH, inputs=QUESTIONS, chat=True
    )


if __name__ == "__main__":
    main()
