"""Addition: "positive + formal" turns casual complaints into polite, formal praise."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import (  # noqa: E402
    compare,
    default_out,
    extract_and_save,
    load_demos,
    parse_args,
    print_comparison,
    rewrite_prompts,
    save,
)

import icv  # noqa: E402

# The parts' strengths weight them in the sum (`+` keeps each part's recommended strength in
# effect); they are also what the "positive" and "formal" columns use.  The sum's strength was
# chosen by icv.calibrate (python recipes/calibrate.py compose_add: 6 held-in casual complaints,
# 0.03-0.08, success = VADER positive AND formal, MiniLM similarity >= 0.55): 0.04, 67% positive
# and formal (unsteered 17%) at similarity 0.75.
POSITIVE_STRENGTH = 0.07
FORMAL_STRENGTH = 0.05
STRENGTH = 0.04

INPUTS = [
    "the pizza was cold and the guy at the counter was super rude lol.",
    "ugh, the hotel room was tiny and smelled kinda weird.",
    "the movie was boring af, total waste of money.",
    "waited like forever for our food, not cool.",
]


def main() -> None:
    args = parse_args(__doc__, strength=STRENGTH, out=default_out(HERE, "positive_formal"))
    model, tokenizer = icv.load_model()
    positive = extract_and_save(
        model, tokenizer, load_demos("sentiment"), name="positive", strength=POSITIVE_STRENGTH, out=None
    )
    formal = extract_and_save(
        model, tokenizer, load_demos(HERE), name="formal", strength=FORMAL_STRENGTH, out=None
    )
    both = (positive + formal).with_metadata(recommended_strength=args.strength)
    save(both, args.out)
    print(f"saved {args.out}  ({both})\n")
    columns = compare(
        model,
        tokenizer,
        rewrite_prompts(INPUTS),
        {
            "positive": (positive, POSITIVE_STRENGTH),
            "formal": (formal, FORMAL_STRENGTH),
            "positive + formal": (both, args.strength),
        },
    )
    print_comparison(INPUTS, columns)


if __name__ == "__main__":
    main()
