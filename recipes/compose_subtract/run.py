"""Subtraction: steer away from rudeness with minus a "rude" vector (and towards it with plus)."""

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

# icv.calibrate (python recipes/calibrate.py compose_subtract: 6 held-in rude sentences, "-rude"
# at 0.03-0.08, alt-profanity-check, MiniLM similarity >= 0.6) chose 0.03: offensive 17%
# (unsteered 67%) at similarity 0.74; 0.05 removes all but keeps only 0.52 similarity.
STRENGTH = 0.03

INPUTS = [
    "This app is useless garbage made by morons.",
    "Stop texting me, you annoying freak.",
    "Your cooking tastes awful.",
    "I asked you twice to fix the door.",
]


def main() -> None:
    args = parse_args(__doc__, strength=STRENGTH, out=default_out(HERE, "not_rude"))
    model, tokenizer = icv.load_model()
    # demos.jsonl goes from polite to rude: this vector points towards rudeness.
    rude = extract_and_save(model, tokenizer, load_demos(HERE), name="rude", strength=args.strength, out=None)
    not_rude = -rude  # the arithmetic: the model's own behaviour minus rudeness
    save(not_rude, args.out)
    columns = compare(
        model,
        tokenizer,
        rewrite_prompts(INPUTS),
        {"- rude": (not_rude, args.strength), "+ rude": (rude, args.strength)},
    )
    print(f"saved {args.out}  ({not_rude})\n")
    print_comparison(INPUTS, columns)


if __name__ == "__main__":
    main()
