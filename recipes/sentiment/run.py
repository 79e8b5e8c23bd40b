"""Sentiment: turn negative review sentences positive, and (with the negated vector) back."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import (  # noqa: E402
    compare,
    compare_with_demos,
    default_out,
    extract_and_save,
    icl_prompts,
    load_demos,
    parse_args,
    print_comparison,
    rewrite_prompts,
)

import icv  # noqa: E402

# icv.calibrate (python recipes/calibrate.py sentiment: 6 held-in negative sentences, strengths
# 0.03-0.08, VADER positive, MiniLM similarity >= 0.6, repeated 3-grams <= 0.2) chose 0.06:
# 6/6 positive at similarity 0.67; 0.07 drops to 0.57 similarity.
STRENGTH = 0.06

NEGATIVE = [
    "The soup was salty and the bread was stale.",
    "Our flight was delayed and the crew was unfriendly.",
    "The cashier was rude to my kids.",
    "I regret buying this laptop.",
    "This place is overpriced and the portions are tiny.",
]
POSITIVE = [
    "The cashier was very kind to my kids.",
    "I love this laptop.",
    "The pasta was perfectly cooked.",
]


def main() -> None:
    args = parse_args(__doc__, strength=STRENGTH, out=default_out(HERE, "positive"), demos_in_prompt=True)
    demos = load_demos(HERE)
    icl_prompts(demos, args.with_demos, [])  # a K past the recipe's demos fails before the model loads
    model, tokenizer = icv.load_model()
    positive = extract_and_save(
        model, tokenizer, demos, name="positive", strength=args.strength, out=args.out
    )
    print(f"saved {args.out}  ({positive})\n")
    print("negative -> positive")
    print_comparison(
        NEGATIVE,
        compare_with_demos(
            model,
            tokenizer,
            NEGATIVE,
            demos,
            args.with_demos,
            "positive",
            (positive, args.strength),
            args.hybrid_strength,
        ),
    )
    # Negating the vector reverses the task: the same pairs read the other way round.
    print("positive -> negative (the negated vector)")
    print_comparison(
        POSITIVE,
        compare(model, tokenizer, rewrite_prompts(POSITIVE), {"negative": (-positive, args.strength)}),
    )


if __name__ == "__main__":
    main()
