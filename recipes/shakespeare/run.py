"""Shakespeare: rewrite modern English sentences in early modern English (thee, thou, hath)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_one_vector_recipe  # noqa: E402

# icv.calibrate (python recipes/calibrate.py shakespeare: 6 held-in sentences, 0.03-0.08, an
# archaic-word check, MiniLM similarity >= 0.55) chose 0.05: 83% archaic (unsteered 0%) at
# similarity 0.59; 0.06 reaches 100% at 0.47 and loops on "hath" from 0.08.
STRENGTH = 0.05

MODERN = [
    "Are you coming with me tonight?",
    "You look tired, my friend.",
    "I have lost my way in the forest.",
    "Tell me the truth, did you take my ring?",
]


def main() -> None:
    run_one_vector_recipe(
        HERE, __doc__, name="early_modern", label="early modern", strength=STRENGTH, inputs=MODERN
    )


if __name__ == "__main__":
    main()
