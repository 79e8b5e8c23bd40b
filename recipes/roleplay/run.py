"""Role-play: the chat model answers ordinary questions as a pirate would."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_one_vector_recipe  # noqa: E402

# icv.calibrate (python recipes/calibrate.py roleplay: 6 held-in questions, 0.03-0.08, a
# pirate-word check on the first line, MiniLM similarity to the question >= 0.35) chose 0.03.
# The persona is weak on this 135M model: at most 1 of 6 first lines had a pirate word at any
# strength; 0.05 shows more of the tone ("ye", "shakin' the sails") with rougher answers.
STRENGTH = 0.03

QUESTIONS = [
    "How do I make a cup of tea?",
    "Why is exercise good for you?",
    "What should I do on a rainy day?",
]


def main() -> None:
    run_one_vector_recipe(
        HERE, __doc__, name="pirate", label="pirate", strength=STRENGTH, inputs=QUESTIONS, chat=True
    )


if __name__ == "__main__":
    main()
