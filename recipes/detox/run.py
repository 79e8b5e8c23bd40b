"""Detoxification: rewrite rude sentences politely, keeping what they say."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_one_vector_recipe  # noqa: E402

# icv.calibrate (python recipes/calibrate.py detox: 6 held-in rude sentences, strengths 0.03-0.08,
# alt-profanity-check, MiniLM similarity >= 0.6) chose 0.04: offensive 17% (unsteered 67%) at
# similarity 0.62; from 0.05 nothing is offensive but similarity falls to 0.36 (generic text).
STRENGTH = 0.04

RUDE = [
    "You are a complete idiot and your plan is stupid.",
    "This app is useless garbage made by morons.",
    "Stop texting me, you annoying freak.",
    "Shut up and get out of my office.",
]


def main() -> None:
    run_one_vector_recipe(HERE, __doc__, name="polite", label="polite", strength=STRENGTH, inputs=RUDE)


if __name__ == "__main__":
    main()
