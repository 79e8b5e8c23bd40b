"""Formality: rewrite casual, informal sentences in a formal register."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_one_vector_recipe  # noqa: E402

# icv.calibrate (python recipes/calibrate.py formality: 6 held-in informal sentences, 0.03-0.08,
# "formal" = capitalised, no slang/contraction/exclamation, MiniLM similarity >= 0.6) chose 0.04:
# 67% formal (unsteered 33%) at similarity 0.67; 0.05 reaches 83% but similarity 0.52.
STRENGTH = 0.04

INFORMAL = [
    "lol that test was sooo hard.",
    "gotta go, my mom is calling.",
    "the new phone is pretty sweet.",
    "can u pick me up at like 6?",
]


def main() -> None:
    run_one_vector_recipe(HERE, __doc__, name="formal", label="formal", strength=STRENGTH, inputs=INFORMAL)


if __name__ == "__main__":
    main()
